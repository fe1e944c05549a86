"""Shared fixtures and helpers. Test modules import the helpers by name (``from conftest import write_nifti``):
pytest's default ``prepend`` import mode puts this folder (it has no ``__init__.py``) first on ``sys.path``."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

# The smallest ViT the unit tests build (48 wide, 2 blocks, 3 heads): ``ViTEncoder(..., **TINY_VIT)``.
TINY_VIT = dict(embed_dim=48, depth=2, num_heads=3)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (ray.init costs ~10 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def write_nifti(path, data, affine=None, dtype=None, header_fn=None) -> Path:
    """``data`` saved as a NIfTI-1 file at ``path`` (folders made; identity affine unless given; cast to ``dtype``
    if given; ``header_fn(img)`` may edit the image's header before saving). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data) if dtype is None else np.asarray(data).astype(dtype),
                          np.eye(4) if affine is None else affine)
    if header_fn:
        header_fn(img)
    nib.save(img, str(path))
    return path


def write_msd(root, training, modality=None, labels=None, **fields) -> Path:
    """An MSD ``dataset.json`` in ``root`` listing ``training`` (its entries as given), CT unless ``modality`` says
    otherwise; ``labels`` and other top-level ``fields`` (``test``, ``numTraining``...) only when given."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = {"modality": modality or {"0": "CT"}, **({"labels": labels} if labels is not None else {}), **fields,
            "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON-lines file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def read_metrics(run_dir) -> list[dict]:
    """The rows of a run directory's ``metrics.jsonl``, in order."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
