"""A folder tree of DICOM files as a source: one unlabelled case per series (the reader is
:mod:`rayssl.data.dicom`)."""

from __future__ import annotations

from collections import Counter

from rayssl.data.sources.base import Case, Source, unique_id
from rayssl.storage import is_uri


def list_dicom(path: str, allow_outside: bool = False) -> Source:
    """A folder tree of DICOM files: one unlabelled case per series (:mod:`rayssl.data.dicom`)."""
    from rayssl.data.dicom import list_series

    if is_uri(path):
        raise ValueError(f"dicom:{path}: DICOM series are read from a local (or mounted) folder")
    series, bad = list_series(path, allow_outside)
    if not series:
        raise ValueError(f"dicom:{path}: no DICOM series below the folder"
                         + (f" ({len(bad)} unusable file(s), e.g. {bad[0][0]}: {bad[0][1]})" if bad else ""))
    cases, seen = [], Counter()
    for uid, s in sorted(series.items(), key=lambda kv: (kv[1]["patient"], kv[1]["number"], kv[0])):
        name = "_".join(p for p in (s["patient"], s["number"]) if p) or uid
        case_id = unique_id("".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name), seen, path)
        cases.append(Case(case_id, sorted(s["files"]), None, split="", subject=s["patient"], kind="dicom"))
    modalities = {s["modality"].upper() for s in series.values()}
    recipe = "ct_btcv" if modalities == {"CT"} else "mri_brats" if modalities == {"MR"} else "none"
    return Source("dicom", path, cases, 3, 1, recipe, {}, {}, [], bad)
