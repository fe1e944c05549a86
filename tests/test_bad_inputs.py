"""A corpus of hostile and careless inputs: each is handled or quarantined with a reason naming the file,
nothing crashes, and nothing outside the dataset root is read."""

import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest

from rayssl.config import DataConfig
from rayssl.data.preprocess import load_case
from rayssl.data.sources import resolve_source

_OPENED: list[str] | None = None


def _audit(event, args):
    if _OPENED is not None and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def opened_during(fn):
    """``fn()``'s result and the paths opened while it ran (Python's ``open`` audit events)."""
    global _OPENED
    _OPENED = []
    try:
        return fn(), list(_OPENED)
    finally:
        _OPENED = None


def leaked(opened: list[str], secret) -> list[str]:
    """The opened paths that lie outside the dataset: the secret volume's folder, or system files."""
    out = (os.path.realpath(secret.parent), "/etc/passwd", "/proc/self/environ", f"/proc/{os.getpid()}/environ")
    return [p for p in opened if os.path.realpath(p).startswith(out) or p.startswith(out)]


def nifti(path, shape=(12, 12, 12), label=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 3, shape) if label else rng.normal(0, 100, shape)).astype(np.uint8 if label else np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


@pytest.fixture
def layout(tmp_path):
    """A dataset folder with two good cases, and a secret volume next to it (outside its root)."""
    root = tmp_path / "ds"
    for i in range(2):
        nifti(root / "imagesTr" / f"good_{i}.nii.gz")
        nifti(root / "labelsTr" / f"good_{i}.nii.gz", label=True)
    secret = nifti(tmp_path / "secret" / "vol.nii.gz")
    return root, secret


ESCAPES = {
    "dotdot": lambda root, secret: "../secret/vol.nii.gz",
    "absolute": lambda root, secret: str(secret),
    "file_uri": lambda root, secret: f"file://{secret}",
    "s3_uri": lambda root, secret: "s3://some-bucket/data/vol.nii.gz",
    "etc_passwd": lambda root, secret: "/etc/passwd",
    "proc_environ": lambda root, secret: "/proc/self/environ",
    "symlink": lambda root, secret: _symlink(root / "imagesTr" / "link.nii.gz", secret),
    "dir_symlink": lambda root, secret: _symlink(root / "imagesTr" / "linked_dir", secret.parent) + "/vol.nii.gz",
}


def _symlink(link, target) -> str:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return f"./imagesTr/{link.name}"


def _msd(root, image, label=None):
    training = [{"image": f"./imagesTr/good_{i}.nii.gz", "label": f"./labelsTr/good_{i}.nii.gz"} for i in range(2)]
    training.append({"image": image, "label": label or "./labelsTr/good_0.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "bg", "1": "a", "2": "b"},
                                                   "training": training}))
    return f"msd:{root}"


def _csv(root, image, label=None):
    rows = ["image,label"] + [f"imagesTr/good_{i}.nii.gz,labelsTr/good_{i}.nii.gz" for i in range(2)]
    rows.append(f"{image},{label or 'labelsTr/good_0.nii.gz'}")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    return f"csv:{root / 'cases.csv'}"


def _check_escape(spec, root, secret, bad, allow=False):
    def listing():
        src = resolve_source(DataConfig(source=spec, folds=2, allow_outside_root=allow))
        return src, [load_case(c, "none") for c in src.cases]

    (src, loaded), opened = opened_during(listing)
    return src, loaded, opened


@pytest.mark.parametrize("kind", ["msd", "csv"])
@pytest.mark.parametrize("escape", sorted(ESCAPES))
@pytest.mark.parametrize("field", ["image", "label"])
def test_manifest_paths_outside_the_root_are_quarantined_unread(layout, kind, escape, field):
    root, secret = layout
    bad = ESCAPES[escape](root, secret)
    spec = (_msd if kind == "msd" else _csv)(root, bad if field == "image" else "./imagesTr/good_1.nii.gz",
                                             bad if field == "label" else None)
    src, loaded, opened = _check_escape(spec, root, secret, bad)
    assert len(src.cases) == 2 and len(loaded) == 2  # the good cases all made it
    (path, reason), = [m for m in src.missing]
    assert "outside the dataset root" in reason and str(root) in reason
    assert not leaked(opened, secret), opened


def test_opting_in_reads_files_outside_the_root(layout):
    root, secret = layout
    src, loaded, _ = _check_escape(_msd(root, "../secret/vol.nii.gz"), root, secret, None, allow=True)
    assert len(src.cases) == 3 and not src.missing
    assert loaded[-1]["image"].shape == (1, 12, 12, 12)


@pytest.mark.parametrize("what", ["image", "label"])
def test_folder_symlink_out_of_the_folder_is_quarantined(layout, what):
    root, secret = layout
    images, labels = root / "imagesTr", root / "labelsTr"
    (images / "linked.nii.gz").symlink_to(secret) if what == "image" else nifti(images / "linked.nii.gz")
    if what == "label":
        (labels / "linked.nii.gz").symlink_to(secret)
    else:
        nifti(labels / "linked.nii.gz", label=True)
    spec = f"folder:{images},{labels}"
    src, loaded, opened = _check_escape(spec, root, secret, None)
    assert sorted(c.case_id for c in src.cases) == ["good_0", "good_1"]
    assert any("outside the dataset root" in r for _, r in src.missing)
    assert not leaked(opened, secret)


def test_cxr14_image_names_cannot_leave_the_root(tmp_path):
    from rayssl.data.synthetic import make_cxr_phantoms

    root = make_cxr_phantoms(tmp_path / "cxr", n=4, seed=0, size=32)
    entries = (root / "Data_Entry_2017.csv").read_text().splitlines()
    first = entries[1].split(",")[0]
    entries[1] = entries[1].replace(first, "../../etc/passwd", 1)
    (root / "Data_Entry_2017.csv").write_text("\n".join(entries) + "\n")
    (root / "train_val_list.txt").write_text((root / "train_val_list.txt").read_text().replace(first, "../../etc/passwd"))
    src, opened = opened_during(lambda: resolve_source(DataConfig(source=f"cxr14:{root}")))
    assert any(p.endswith("etc/passwd") and "outside the dataset root" in r for p, r in src.missing)
    assert not leaked(opened, tmp_path / "none" / "x")
