"""The entry point: a ``data.source`` SPEC to a :class:`~.base.Source` whose cases are checked, split and
(optionally) subset."""

from __future__ import annotations

import posixpath

from rayssl.config import DataConfig
from rayssl.data.sources.base import QuarantineError, Source, bad_spec, is_nifti, listing_message
from rayssl.data.sources.channels import majority_channels
from rayssl.data.sources.csv_list import list_csv
from rayssl.data.sources.cxr14 import list_cxr14
from rayssl.data.sources.dicom import list_dicom
from rayssl.data.sources.folder import list_folder
from rayssl.data.sources.msd import list_msd
from rayssl.data.sources.safety import keep_existing, keep_inside
from rayssl.data.sources.splits import assign_splits, group_copies, train_subset
from rayssl.data.sources.synthetic import list_synthetic
from rayssl.storage import absolute, exists, is_dir, is_uri, list_files, special_kind


def _detect(path: str, spec: str, allow_outside: bool = False) -> Source:
    """The source a bare PATH holds, told from its name or its folder's files."""
    if path.lower().endswith(".json"):
        return list_msd(path, allow_outside)
    if posixpath.basename(path) == "Data_Entry_2017.csv":
        return list_cxr14(path, allow_outside)
    if path.lower().endswith(".csv"):
        if not exists(path):
            raise bad_spec(spec, "file does not exist")
        return list_csv(path, allow_outside)
    files = list_files(path)
    if files is None:
        raise bad_spec(spec, "path does not exist" if not exists(path) else "cannot tell the source type")
    names = {posixpath.basename(f) for f in files}
    if "dataset.json" in names:
        return list_msd(path, allow_outside)
    if "Data_Entry_2017.csv" in names:
        return list_cxr14(path, allow_outside)
    if any(is_nifti(f) for f in files):
        return list_folder(path)
    raise bad_spec(spec, "directory has no dataset.json, Data_Entry_2017.csv or .nii/.nii.gz files")


def resolve_source(data: DataConfig) -> Source:
    """List the cases of ``data.source`` and assign splits.

    Args:
        data: the data config; uses ``source``, ``seed``, ``folds``, ``val_fold``, ``test_fold``,
            ``synthetic_dir``.

    Returns:
        A :class:`Source`. Listed files that do not exist are in ``source.missing`` with reason
        ``"file not found"``, not in ``source.cases``; so are ChestX-ray14 images with an unknown
        finding name (reason ``"unknown finding NAME"``). Folder and CSV sources of volumes default
        to recipe ``"none"`` (set ``data.recipe``); MSD picks ``ct_btcv`` for CT, ``mri_brats`` for MRI.
        Cases that list the same image file or a copy of it share a subject, hence a split.

    Raises:
        ValueError: unknown SPEC form, missing path, malformed dataset.json / CSV, a manifest that is a
            symlink leading out of the dataset root; ``data.source`` is a pool (pre-training resolves it with
            :func:`~.pool.resolve_pool`).
    """
    if data.is_pool:
        raise ValueError(f"data.source={data.source!r} is a pool of sources, and pools are for pre-training "
                         "(jobs/pretrain.py, rayssl.data.sources.resolve_pool); fine-tuning, prediction and "
                         "prepare_data read one source: give data.source one SPEC")
    spec = data.source.strip()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "synthetic":
        src = list_synthetic(rest, data, spec)
    elif sep and prefix in ("msd", "folder", "csv", "cxr14", "dicom"):
        if not rest:
            raise bad_spec(spec, "missing path")
        rest = ",".join(absolute(p) for p in rest.split(",")) if prefix == "folder" else absolute(rest)
        first = rest.partition(",")[0]
        if special_kind(first):
            raise bad_spec(spec, f"{first!r} is {special_kind(first)}, not a file or folder")
        if not (is_dir(first) or exists(first)):
            raise bad_spec(spec, f"path {first!r} does not exist")
        listers = {"msd": list_msd, "csv": list_csv, "cxr14": list_cxr14, "dicom": list_dicom}
        src = list_folder(rest) if prefix == "folder" else listers[prefix](rest, data.allow_outside_root)
    elif sep and not is_uri(spec) and len(prefix) > 1:
        raise bad_spec(spec, f"unknown source type {prefix!r}")
    else:
        src = _detect(absolute(spec), spec, data.allow_outside_root)
    if not data.allow_outside_root:
        src.cases = keep_inside(src.cases, src.roots, src.missing)
    src.cases = keep_existing(src.cases, src.missing)
    if data.strict and src.missing:  # known at listing time: fail before anything is processed
        raise QuarantineError(listing_message(f"source {data.source!r}", src.missing))
    if data.channels is not None:
        src.channels = data.channels
    elif src.channels is None:
        src.channels = majority_channels(src.cases)
    if data.val_fold == "all":
        raise ValueError("data.val_fold=all is cross-validation: one fine-tuning run per fold (jobs/finetune.py), "
                         "not a split of one source listing")
    group_copies(src.cases, spec)
    assign_splits(src.cases, data.folds, data.val_fold, data.test_fold, data.seed)
    if data.train_cases is not None:
        src.cases = train_subset(src.cases, data.train_cases, data.subset_seed, spec)
    return src
