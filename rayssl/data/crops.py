"""Fresh random crops every epoch, cut on the training worker from preprocessed whole volumes.

The expensive, deterministic part of the data flow (read, orient, resample, window, foreground crop)
runs once per case in Ray Data; the cheap, random part runs here, anew for every case in every epoch,
as the papers' code does (MONAI ``RandSpatialCropSamplesd`` / ``RandCropByPosNegLabeld`` + ``RandFlipd``
in SelfMedMAE, a new sub-volume per draw in Models Genesis).

Reproducibility: the crops (positions and flips) of a case in an epoch depend only on
``(data.seed, case_id, epoch)`` (:func:`rayssl.data.patches.case_rng`; a pool's case streamed twice in an epoch
also on the repeat, :func:`crop_rng`), whichever worker gets the case.
Which worker gets which case, and so the order and the make-up of batches, follows Ray Data's
streaming split and is not reproducible across runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from rayssl.config import DataConfig
from rayssl.data.patches import case_rng, patch_origins, sample_patches

MIX_VOLUMES = 4
"""Crops of this many volumes are shuffled together before they are batched."""


def patches_per_case(data: DataConfig, shape: tuple[int, ...] | None = None) -> int:
    """Crops cut from each case per epoch: one when the ROI is the whole image (a resized 2D image, or a
    volume of ``shape`` equal to the ROI), else ``data.patches_per_volume``."""
    from rayssl.data.pipeline import image_size_2d

    if shape is not None:
        whole = tuple(shape[1:]) == tuple(data.roi)
    else:
        whole = data.spatial_dims == 2 and tuple(data.roi) == (image_size_2d(data),) * 2
    return 1 if whole else data.patches_per_volume


def flip_axes(ndim: int, rng: np.random.Generator, prob: float) -> list[int]:
    """The spatial axes one patch flips along, each with probability ``prob`` (see :func:`flip_patch`)."""
    if prob <= 0:
        return []
    axes = range(ndim) if ndim == 3 else (ndim - 1,)
    return [a for a in axes if rng.random() < prob]


def flip_patch(patch: dict, rng: np.random.Generator, prob: float) -> dict:
    """Flip ``image`` (and ``label``) of one patch along each spatial axis with probability ``prob``.

    3D: every axis (MONAI ``RandFlipd`` per axis, as SelfMedMAE's pre-training transforms); 2D: the
    horizontal axis only (facebookresearch/mae ``RandomHorizontalFlip``).
    """
    flip = flip_axes(patch["image"].ndim - 1, rng, prob)
    if not flip:
        return patch
    patch["image"] = np.ascontiguousarray(np.flip(patch["image"], [a + 1 for a in flip]))
    if "label" in patch:
        patch["label"] = np.ascontiguousarray(np.flip(patch["label"], flip))
    return patch


def crop_rng(seed: int, volume: dict, epoch: int) -> np.random.Generator:
    """The generator of one case's crops in one epoch (:func:`case_rng`); a volume streamed again in the same epoch
    (``repeat`` N > 0, a pool's weights: :mod:`rayssl.data.pool_shares`) draws other crops."""
    repeat = int(volume.get("repeat", 0))
    case = str(volume["case_id"])
    return case_rng(seed, f"{case}\x00repeat {repeat}" if repeat else case, epoch)


def case_crops(volume: dict, data: DataConfig, epoch: int) -> list[dict]:
    """The crops of one case in one epoch: ``sample_patches`` then flips, all from the case's generator."""
    rng = crop_rng(data.seed, volume, epoch)
    return [flip_patch(p, rng, data.flip_prob) for p in sample_patches(volume, data, rng)]


class DeviceCrops:
    """The crops of :func:`case_crops`, cut on a device (a GPU) from volumes sent to it once.

    The case's generator draws the origins and flips on the CPU exactly as :func:`case_crops` does; only the
    cutting, flipping and batching run on the device, so instead of every crop crossing to the GPU every epoch,
    each volume crosses once. Meant for kept volumes, a set that fits memory by construction.

    Args:
        device: where the volumes are kept and the crops cut.
        data: ``roi``, ``patches_per_volume``, ``sampling`` and its parameters, ``flip_prob``, ``seed``,
            ``patch_dtype``.
    """

    def __init__(self, device: torch.device, data: DataConfig):
        self.device, self.data = device, data
        self.dtype = torch.from_numpy(np.empty(0, data.patch_dtype)).dtype
        self.volumes: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def plan(self, volume: dict, epoch: int) -> list[dict]:
        """One case's crops in one epoch, as ``{"case", "origin", "flip", "target"}``; sends the case once."""
        case = str(volume["case_id"])  # a repeated volume is sent once
        rng = crop_rng(self.data.seed, volume, epoch)
        image, label, origins, _ = patch_origins(volume, self.data, rng)
        if case not in self.volumes:
            self.volumes[case] = (torch.from_numpy(np.ascontiguousarray(image)).to(self.device),
                                  None if label is None else torch.from_numpy(np.ascontiguousarray(label)).to(self.device))
        ndim = self.data.spatial_dims
        return [{"case": case, "origin": o, "flip": flip_axes(ndim, rng, self.data.flip_prob), "target": volume.get("target")}
                for o in origins]

    def collate(self, plans: list[dict], columns: list[str]) -> dict[str, torch.Tensor]:
        """Cut, flip and stack the planned crops on the device."""
        images, labels = [], []
        for c in plans:
            image, label = self.volumes[c["case"]]
            box = tuple(slice(o, o + r) for o, r in zip(c["origin"], self.data.roi))
            images.append(image[(slice(None), *box)].flip([a + 1 for a in c["flip"]]))
            if "label" in columns:
                labels.append(label[box].flip(c["flip"]))
        out = {"image": torch.stack(images).to(self.dtype)}
        if "label" in columns:
            out["label"] = torch.stack(labels).to(torch.uint8)
        if "target" in columns:
            out["target"] = torch.from_numpy(np.stack([np.asarray(c["target"], np.float32) for c in plans])).to(self.device)
        return {k: out[k] for k in columns}


def epoch_batches(
    volumes: Iterable[dict],
    data: DataConfig,
    epoch: int,
    batch_size: int,
    columns: list[str],
    shuffle_seed: int = 0,
    on_device: DeviceCrops | None = None,
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
        on_device: cut the same crops on its device instead (:class:`DeviceCrops`).

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
            if on_device is not None:
                yield on_device.collate(chunk, columns)
            else:
                yield {k: torch.from_numpy(np.stack([p[k] for p in chunk])) for k in columns}
        buffer = [] if final else buffer[full:]

    for volume in volumes:
        buffer += case_crops(volume, data, epoch) if on_device is None else on_device.plan(volume, epoch)
        pending += 1
        if pending == MIX_VOLUMES:
            yield from drain(final=False)
            pending = 0
    yield from drain(final=True)
