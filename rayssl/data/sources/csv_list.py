"""A CSV manifest: an ``image`` column (``;`` between channel files), optional ``label``, ``split``,
``subject``, ``case_id``; paths relative to the CSV's folder. (Named so as not to shadow the standard ``csv``.)"""

from __future__ import annotations

import csv
import io
import posixpath
from collections import Counter

from rayssl.data.sources.base import IMAGE_2D, Case, Source, stem, unique_id
from rayssl.data.sources.safety import read_text
from rayssl.storage import is_uri, join_relative


def csv_rows(path: str, root: str | None) -> list[dict]:
    """The rows of a CSV manifest (:func:`~.safety.read_text`); a clear error naming the file when it is not CSV."""
    try:
        return list(csv.DictReader(io.StringIO(read_text(path, root))))
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from None


def list_csv(path: str, allow_outside: bool = False) -> Source:
    root = posixpath.dirname(path) if is_uri(path) else posixpath.dirname(posixpath.abspath(path))
    rows = csv_rows(path, None if allow_outside else root)
    header = list(rows[0].keys()) if rows else []
    if "image" not in header:
        raise ValueError(f"{path}: CSV needs an 'image' column (optional: label, split, subject), got {header}")
    cases, seen = [], Counter()
    for i, row in enumerate(rows, start=2):
        images = [join_relative(root, p) for p in (row.get("image") or "").split(";") if p.strip()]
        if not images:
            raise ValueError(f"{path}: line {i}: empty 'image'")
        split = (row.get("split") or "").strip().lower()
        if split not in ("", "train", "val", "test"):
            raise ValueError(f"{path}: line {i}: split must be train, val or test, got {split!r}")
        cid = unique_id((row.get("case_id") or "").strip() or stem(images[0]), seen, path)
        label = join_relative(root, row["label"]) if (row.get("label") or "").strip() else None
        cases.append(Case(cid, images, label, split, (row.get("subject") or "").strip()))
    two_d = bool(cases) and cases[0].image[0].lower().endswith(IMAGE_2D)
    if two_d:
        return Source("csv", root, cases, 2, 1, "cxr", {}, {}, [], [])
    channels = len(cases[0].image) if cases and len(cases[0].image) > 1 else None  # one file: from its header
    return Source("csv", root, cases, 3, channels, "none", {}, {}, [], [])
