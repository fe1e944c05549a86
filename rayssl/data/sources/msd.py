"""Medical Segmentation Decathlon: a folder with ``dataset.json`` (or the json itself)."""

from __future__ import annotations

import json
import posixpath
from collections import Counter

from rayssl.data.sources.base import Case, Source, stem, unique_id
from rayssl.data.sources.safety import read_text
from rayssl.storage import is_uri, join_relative

_MRI_NAMES = {"MRI", "MR", "FLAIR", "T1", "T1W", "T1GD", "T1C", "T2", "T2W", "ADC", "DWI", "PD"}


def list_msd(path: str, allow_outside: bool = False) -> Source:
    json_path = path if path.lower().endswith(".json") else join_relative(path, "dataset.json")
    root = posixpath.dirname(json_path) if is_uri(json_path) else posixpath.dirname(posixpath.abspath(json_path))
    try:
        meta = json.loads(read_text(json_path, None if allow_outside else root))
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{json_path}: not valid JSON: nested too deeply") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{json_path}: expected an MSD dataset.json object, got {type(meta).__name__}")
    for key in ("training", "test"):
        if not isinstance(meta.get(key) or [], list):
            raise ValueError(f"{json_path}: '{key}' must be a list, got {type(meta[key]).__name__}")
    modality = _index_map(meta.get("modality") or {"0": "unknown"}, json_path, "modality")
    labels = _index_map(meta.get("labels") or {}, json_path, "labels")
    cases, seen = [], Counter()
    for key in ("training", "test"):
        for i, item in enumerate(meta.get(key) or []):
            images = item.get("image") if isinstance(item, dict) else item if key == "test" else None
            images = images if isinstance(images, list) else [images]
            label = item.get("label") if isinstance(item, dict) and key == "training" else None
            if not images or not all(isinstance(p, str) and p.strip() for p in images) or \
                    (label is not None and not (isinstance(label, str) and label.strip())):
                raise ValueError(f"{json_path}: {key}[{i}] must be {'an object with' if key == 'training' else 'a path or an object with'} "
                                 f"'image' (a path or a list of paths){' and an optional label path' if key == 'training' else ''}, "
                                 f"got {_shown(item)}")
            images = [join_relative(root, p) for p in images]
            case_id = unique_id(stem(images[0]), seen, json_path)
            cases.append(Case(case_id, images, join_relative(root, label) if label else None, split="" if key == "training" else "test"))
    names = {v.upper() for v in modality.values()}
    recipe = "ct_btcv" if names == {"CT"} else "mri_brats" if names and names <= _MRI_NAMES else "none"
    return Source("msd", root, cases, 3, len(modality), recipe, labels, modality, [], [])


def _shown(value) -> str:
    """A manifest value as JSON for an error message, at most 200 characters."""
    try:
        return json.dumps(value)[:200]
    except (RecursionError, ValueError):
        return f"a deeply nested {type(value).__name__}"


def _index_map(value, where: str, key: str) -> dict[int, str]:
    """An MSD ``{"0": "CT", ...}`` mapping as ``{0: "CT"}``; a clear error naming the file and key otherwise."""
    try:
        out = {int(k): str(v) for k, v in value.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{where}: '{key}' must map integer indices to names, e.g. {{\"0\": \"CT\"}}, got "
                         f"{_shown(value)}") from None
    if any(k < 0 for k in out):
        raise ValueError(f"{where}: '{key}' indices must be >= 0, got {sorted(out)}")
    return out
