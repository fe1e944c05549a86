"""A folder of NIfTI images, with an optional folder of labels of the same file names."""

from __future__ import annotations

import posixpath

from rayssl.data.sources.base import Case, Source, is_nifti, stem
from rayssl.storage import is_dir, join_relative, list_files


def list_folder(spec: str) -> Source:
    """``IMAGES[,LABELS]``: one case per ``.nii`` / ``.nii.gz`` file in ``IMAGES``."""
    images_dir, _, labels_dir = spec.partition(",")
    files = list_files(images_dir)
    if files is None:
        raise ValueError(f"folder:{spec}: {images_dir!r} is not a directory")
    if labels_dir and not is_dir(labels_dir):
        raise ValueError(f"folder:{spec}: labels folder {labels_dir!r} is not a directory")
    cases = []
    for f in files:
        if is_nifti(f):
            label = join_relative(labels_dir, posixpath.basename(f)) if labels_dir else None
            cases.append(Case(stem(f), [f], label, split=""))
    if not cases:
        raise ValueError(f"folder:{spec}: no .nii/.nii.gz files in {images_dir!r}")
    roots = [images_dir, labels_dir] if labels_dir else [images_dir]
    return Source("folder", images_dir, cases, 3, None, "none", {}, {}, [], [], roots)
