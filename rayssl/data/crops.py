"""Fresh random crops every epoch, cut on the training worker from preprocessed whole volumes.

The expensive, deterministic part of the data flow (read, orient, resample, window, foreground crop)
runs once per case in Ray Data; the cheap, random part runs here, anew for every case in every epoch,
as the papers' code does (MONAI ``RandSpatialCropSamplesd`` / ``RandCropByPosNegLabeld`` + ``RandFlipd``
in SelfMedMAE, a new sub-volume per draw in Models Genesis).

Reproducibility: the crops (positions and flips) of a case in an epoch depend only on
``(data.seed, case_id, epoch)`` (:func:`rayssl.data.patches.case_rng`), whichever worker gets the case.
Which worker gets which case, and so the order and the make-up of batches, follows Ray Data's
streaming split and is not reproducible across runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from rayssl.config import DataConfig
from rayssl.data.patches import case_rng, sample_patches

MIX_VOLUMES = 4
"""Crops of this many volumes are shuffled together before they are batched."""


def patches_per_case(data: DataConfig, shape: tuple[int, ...] | None = None) -> int:
    """Crops cut from each case per epoch: one when the ROI is the whole image (a resized 2D image, or a
    volume of ``shape`` equal to the ROI), else ``data.patches_per_volume``."""
    from rayssl.data.pipeline import image_size_2d

    if shape is not None:
        whole = tuple(shape[1:]) == tuple(data.roi)
    else:
        whole = len(data.roi) == 2 and tuple(data.roi) == (image_size_2d(data),) * 2
    return 1 if whole else data.patches_per_volume


def flip_patch(patch: dict, rng: np.random.Generator, prob: float) -> dict:
    """Flip ``image`` (and ``label``) of one patch along each spatial axis with probability ``prob``.

    3D: every axis (MONAI ``RandFlipd`` per axis, as SelfMedMAE's pre-training transforms); 2D: the
    horizontal axis only (facebookresearch/mae ``RandomHorizontalFlip``).
    """
    if prob <= 0:
        return patch
    ndim = patch["image"].ndim - 1
    axes = range(ndim) if ndim == 3 else (ndim - 1,)
    flip = [a for a in axes if rng.random() < prob]
    if not flip:
        return patch
    patch["image"] = np.ascontiguousarray(np.flip(patch["image"], [a + 1 for a in flip]))
    if "label" in patch:
        patch["label"] = np.ascontiguousarray(np.flip(patch["label"], flip))
    return patch


def case_crops(volume: dict, data: DataConfig, epoch: int) -> list[dict]:
    """The crops of one case in one epoch: ``sample_patches`` then flips, all from the case's generator."""
    rng = case_rng(data.seed, str(volume["case_id"]), epoch)
    return [flip_patch(p, rng, data.flip_prob) for p in sample_patches(volume, data, rng)]


def epoch_batches(
    volumes: Iterable[dict],
    data: DataConfig,
    epoch: int,
    batch_size: int,
    columns: list[str],
    shuffle_seed: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of fresh crops for one epoch from a stream of preprocessed volumes.

    Crops of ``MIX_VOLUMES`` consecutive volumes are shuffled together, so a batch mixes cases;
    memory holds those volumes' crops only. The last incomplete batch of the epoch is dropped.

    Args:
        volumes: rows ``{"image": [C, *spatial], "label"?, "target"?, "case_id"}``, e.g. a Ray Train
            dataset shard's ``iter_rows()``.
        data: ``roi``, ``patches_per_volume``, ``sampling`` and its parameters, ``flip_prob``, ``seed``.
        epoch: selects the crops (see the module docstring).
        batch_size: patches per batch.
        columns: the patch fields to batch, e.g. ``["image"]`` or ``["image", "label"]``.
        shuffle_seed: seeds the order of crops within the mixing buffer (e.g. the worker's rank).

    Yields:
        ``{column: tensor [N, ...]}`` with ``N = batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.random.default_rng([data.seed, shuffle_seed, epoch])
    buffer: list[dict] = []
    pending = 0

    def drain(final: bool) -> Iterator[dict[str, torch.Tensor]]:
        nonlocal buffer
        order.shuffle(buffer)
        full = len(buffer) // batch_size * batch_size
        for i in range(0, full, batch_size):
            chunk = buffer[i : i + batch_size]
            yield {k: torch.from_numpy(np.stack([p[k] for p in chunk])) for k in columns}
        buffer = [] if final else buffer[full:]

    for volume in volumes:
        buffer += case_crops(volume, data, epoch)
        pending += 1
        if pending == MIX_VOLUMES:
            yield from drain(final=False)
            pending = 0
    yield from drain(final=True)
