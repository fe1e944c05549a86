"""ChestX-ray14: ``Data_Entry_2017.csv`` and its images, 14 findings as multi-hot targets."""

from __future__ import annotations

import posixpath

from rayssl.data.sources.base import Case, Source, stem
from rayssl.data.sources.csv_list import csv_rows
from rayssl.data.sources.safety import read_text
from rayssl.data.synthetic import CXR_FINDINGS
from rayssl.storage import exists, is_dir, join_relative, list_dirs, list_files, special_kind

CXR14_CLASSES = list(CXR_FINDINGS)


def _image_dirs(root: str) -> dict[str, str]:
    """``{image name: folder}`` for the Kaggle layout ``images_001/images/...``; {} when ``images/`` exists."""
    if is_dir(join_relative(root, "images")):
        return {}
    where = {}
    for sub in sorted(posixpath.basename(f.rstrip("/")) for f in list_dirs(root)):
        if sub.startswith("images_"):
            folder = join_relative(join_relative(root, sub), "images")
            where.update({posixpath.basename(f): folder for f in list_files(folder) or []})
    return where


def list_cxr14(path: str, allow_outside: bool = False) -> Source:
    """ChestX-ray14: ``Data_Entry_2017.csv``, images in ``images/`` (or Kaggle's ``images_NNN/images/``).

    Images named in neither ``train_val_list.txt`` nor ``test_list.txt`` (when those exist) are skipped.
    An unknown finding name puts the image into ``missing`` with the reason naming the finding.
    """
    root = posixpath.dirname(path) if path.lower().endswith(".csv") else path
    entry = path if path.lower().endswith(".csv") else join_relative(root, "Data_Entry_2017.csv")
    rows = csv_rows(entry, None if allow_outside else root)
    need = {"Image Index", "Finding Labels", "Patient ID"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{entry}: expected ChestX-ray14 columns {sorted(need)}")
    lists = {}
    for name, split in (("train_val_list.txt", ""), ("test_list.txt", "test")):
        p = join_relative(root, name)
        if exists(p) or special_kind(p):  # a FIFO is refused by read_bytes, not taken for an absent list
            lists.update({line.strip(): split for line in read_text(p, None if allow_outside else root).splitlines()
                          if line.strip()})
    index = {n: i for i, n in enumerate(CXR14_CLASSES)}
    folders = _image_dirs(root)
    cases, missing = [], []
    for row in rows:
        name = row["Image Index"].strip()
        if lists and name not in lists:
            continue  # listed in neither split file
        found = [f.strip() for f in row["Finding Labels"].split("|") if f.strip() and f.strip() != "No Finding"]
        unknown = [f for f in found if f not in index]
        image = join_relative(folders.get(name) or join_relative(root, "images"), name)
        if unknown:
            missing.append((image, f"unknown finding {', '.join(unknown)}"))
            continue
        target = [0.0] * len(CXR14_CLASSES)
        for f in found:
            target[index[f]] = 1.0
        cases.append(Case(stem(name), [image], None, lists.get(name, ""), row["Patient ID"].strip(), target))
    return Source("cxr14", root, cases, 2, 1, "cxr", {}, {}, list(CXR14_CLASSES), missing)
