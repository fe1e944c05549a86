"""Patch (sub-volume) sampling from one preprocessed case: random, balanced, Models Genesis, tissue, grid.

Pure numpy, no Ray: :func:`sample_patches` is what the Ray Data pipeline calls once per case.
A case is the dict :func:`rayssl.data.preprocess.load_case` returns (``image`` ``[C, *spatial]``).
Patches keep the volume's voxel grid; ``origin`` is the start index of the patch per spatial axis.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from rayssl.config import DataConfig
from rayssl.config.recipes import hu_to_intensity

GENESIS_MAX_ATTEMPTS = 50
"""``genesis`` / ``tissue`` sampling: candidate crops drawn per patch before the best one found is kept
(Models Genesis ``infinite_generator_3D.py`` gives a scan ``50 * scale`` draws for ``scale`` crops)."""
GENESIS_LOOKAHEAD = 3
"""``genesis`` sampling: slices searched along depth per voxel (Models Genesis ``len_depth``)."""


def case_rng(seed: int, case_id: str, epoch: int = 0) -> np.random.Generator:
    """A random generator that depends only on ``(seed, case_id, epoch)``.

    Python's ``hash()`` is salted per process, so a cryptographic digest keeps the crops of a case
    identical across workers, runs and machines.

    Args:
        seed: the run's seed (``DataConfig.seed``).
        case_id: the case identifier.
        epoch: the epoch; a new epoch draws new crops.
    """
    digest = hashlib.blake2b(f"{seed}\x00{case_id}\x00{epoch}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def _check_roi(shape: Sequence[int], roi: Sequence[int]) -> None:
    if len(roi) != len(shape):
        raise ValueError(f"roi {tuple(roi)} has {len(roi)} axes but the image has spatial shape {tuple(shape)}")
    if min(roi) < 1:
        raise ValueError(f"roi must be positive, got {tuple(roi)}")


def grid_origins(shape: Sequence[int], roi: Sequence[int], overlap: float = 0.0) -> list[tuple[int, ...]]:
    """Start indices of sliding-window tiles that cover the whole volume (the last tile is flush).

    Same positions as MONAI's ``sliding_window_inference`` for the same ``overlap``.

    Args:
        shape: spatial shape of the volume, each axis ``>= roi``.
        roi: tile shape.
        overlap: fraction of overlap between neighbouring tiles, in ``[0, 1)``.
    """
    from monai.data.utils import dense_patch_slices  # lazy: importing MONAI costs seconds

    _check_roi(shape, roi)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if any(s < r for s, r in zip(shape, roi)):
        raise ValueError(f"volume shape {tuple(shape)} is smaller than roi {tuple(roi)}; pad it first (pad_to_roi)")
    interval = [max(1, int(r * (1.0 - overlap))) for r in roi]
    bounds = dense_patch_slices(tuple(shape), tuple(roi), interval, return_slice=False)
    return [tuple(int(start) for start, _ in b) for b in bounds]


def pad_to_roi(
    image: np.ndarray, label: np.ndarray | None, roi: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad spatial axes shorter than ``roi`` at their end, so origins keep indexing the original volume.

    Args:
        image: ``[C, *spatial]``; padded with each channel's minimum (the background after windowing).
        label: ``[*spatial]`` or ``None``; padded with 0 (background).
        roi: the patch shape the volume must hold.
    """
    _check_roi(image.shape[1:], roi)
    pad = [(0, max(0, r - s)) for s, r in zip(image.shape[1:], roi)]
    if not any(after for _, after in pad):
        return image, label
    fill = image.reshape(image.shape[0], -1).min(axis=1) if image.size else np.zeros(image.shape[0])
    image = np.stack([np.pad(ch, pad, mode="constant", constant_values=v) for ch, v in zip(image, fill)])
    if label is not None:
        label = np.pad(label, pad, mode="constant", constant_values=0)
    return image, label


def _uniform(rng: np.random.Generator, shape: Sequence[int], roi: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(rng.integers(0, s - r + 1)) for s, r in zip(shape, roi))


def _centred(centre: Sequence[int], shape: Sequence[int], roi: Sequence[int]) -> tuple[int, ...]:
    # the crop centred on a voxel, shifted back inside the volume (like MONAI's correct_crop_centers)
    return tuple(int(min(max(c - r // 2, 0), s - r)) for c, s, r in zip(centre, shape, roi))


def _balanced(rng, label, n, pos_fraction, shape, roi, by_class: bool = False) -> list[tuple[int, ...]]:
    # MONAI's RandCropByPosNegLabel draws pos/neg per crop at random and centres negatives on
    # background voxels; here the positive count is exact (round(n * pos_fraction)) and the rest uniform.
    # by_class (``foreground``): each positive crop first draws one of the foreground classes present uniformly, then
    # a voxel of it, as nnU-Net's foreground oversampling (nnunetv2 training/dataloading/base_data_loader.py,
    # get_bbox with force_fg), so small structures are centred as often as large ones
    flat_label = label.ravel() if label is not None else np.empty(0, dtype=np.uint8)
    fg = np.flatnonzero(flat_label > 0)
    n_pos = int(round(n * pos_fraction)) if fg.size else 0
    if by_class and n_pos:
        classes = np.unique(flat_label[fg])
        picks = [rng.choice(np.flatnonzero(flat_label == k)) for k in rng.choice(classes, size=n_pos, replace=True)]
    else:
        picks = rng.choice(fg, size=n_pos, replace=True) if n_pos else []
    origins = [_centred(np.unravel_index(flat, shape), shape, roi) for flat in picks]
    origins += [_uniform(rng, shape, roi) for _ in range(n - n_pos)]
    order = rng.permutation(n)
    return [origins[i] for i in order]


def _by_class(rng, label, n, shape, roi) -> list[tuple[int, ...]]:
    # MONAI's RandCropByLabelClasses with equal ratios: each crop picks one of the classes present in the
    # case (background included) uniformly, then centres on a random voxel of that class, so small organs
    # are seen as often as large ones
    if label is None:
        return [_uniform(rng, shape, roi) for _ in range(n)]
    flat = label.ravel()
    classes = np.unique(flat)
    picked = rng.choice(classes, size=n, replace=True)
    origins = []
    for k in picked:
        voxels = np.flatnonzero(flat == k)
        origins.append(_centred(np.unravel_index(voxels[rng.integers(voxels.size)], shape), shape, roi))
    return origins


def _tissue_fraction(image: np.ndarray, origin, roi, threshold: float) -> float:
    crop = image[(slice(None), *(slice(o, o + r) for o, r in zip(origin, roi)))]
    return float((crop > threshold).mean())


def _tissue(rng, image, n, data: DataConfig, shape, roi) -> list[tuple[tuple[int, ...], float]]:
    # redraw a crop that is mostly air; after GENESIS_MAX_ATTEMPTS keep the one with most tissue
    picked = []
    for _ in range(n):
        best, best_frac = None, -1.0
        for _ in range(GENESIS_MAX_ATTEMPTS):
            origin = _uniform(rng, shape, roi)
            frac = _tissue_fraction(image, origin, roi, data.air_threshold)
            if frac > best_frac:
                best, best_frac = origin, frac
            if frac >= data.min_tissue_fraction:
                break
        picked.append((best, best_frac))
    return picked


def genesis_threshold(data: DataConfig, recipe: str | None = None) -> float:
    """``genesis`` sampling: the intensity at or above which a voxel is dense (not lung).

    ``data.genesis_threshold`` when set, else ``data.genesis_hu`` (-150 HU) through the recipe's window:
    Models Genesis ``infinite_generator_3D.py`` ``HU_thred = (-150 - hu_min) / (hu_max - hu_min)`` with
    its -1000..1000 HU window, 0.425 for ``ct_genesis``.

    Args:
        data: the sampling parameters.
        recipe: the case's recipe (default ``data.recipe``).
    """
    if data.genesis_threshold is not None:
        return float(data.genesis_threshold)
    recipe = recipe or data.recipe
    if recipe is None:
        raise ValueError("sampling=genesis needs data.recipe (its HU window places data.genesis_hu) or data.genesis_threshold")
    return hu_to_intensity(recipe, data.genesis_hu)


def _genesis_fraction(image: np.ndarray, origin, roi, threshold: float) -> float:
    # Models Genesis infinite_generator_3D.py, infinite_generator_from_one_volume: per voxel (i, j, d),
    # k = the first of the slices d, d+1, .., d+len_depth-1 along depth (the last axis) that is
    # >= HU_thred (k = len_depth-1 when none is), weight 1 - k / (len_depth-1); a crop is rejected when
    # sum(weights) > lung_max * rows * cols * deps. The look-ahead reads the slices past the crop; at the
    # volume's end, slices past it count as not dense (the reference keeps len_depth slices spare instead).
    box = tuple(slice(o, o + r) for o, r in zip(origin[:-1], roi[:-1]))
    z0, depth = origin[-1], roi[-1]
    dense = image[(slice(None), *box, slice(z0, z0 + depth + GENESIS_LOOKAHEAD - 1))] >= threshold
    found = np.zeros((*dense.shape[:-1], depth), bool)
    weight = np.zeros(found.shape, np.float64)
    for k in range(GENESIS_LOOKAHEAD):
        hit = np.zeros_like(found)
        ahead = dense[..., k : k + depth]
        hit[..., : ahead.shape[-1]] = ahead
        weight[hit & ~found] = 1.0 - k / (GENESIS_LOOKAHEAD - 1)
        found |= hit
    return float(weight.mean())


def _margin_range(s: int, r: int, m: int) -> tuple[int, int]:
    # start indices [lo, hi] at least m from both borders; m shrinks on an axis too short for r + 2 m
    m = min(m, (s - r) // 2)
    return m, s - r - m


def _genesis(rng, image, n, data: DataConfig, shape, roi, threshold: float) -> list[tuple[tuple[int, ...], float]]:
    # Models Genesis chest CT crops (infinite_generator_3D.py): uniform starts at least len_border /
    # len_border_z (data.genesis_margin) from the borders, rejected while the depth-weighted fraction of
    # dense voxels exceeds lung_max (data.genesis_max_fraction); after GENESIS_MAX_ATTEMPTS the crop with
    # the smallest fraction is kept (the reference instead drops the scan's missing crops)
    margin = data.genesis_margin or (0,) * data.spatial_dims
    ranges = [_margin_range(s, r, m) for s, r, m in zip(shape, roi, margin)]
    picked = []
    for _ in range(n):
        best, best_frac = None, 2.0
        for _ in range(GENESIS_MAX_ATTEMPTS):
            origin = tuple(int(rng.integers(lo, hi + 1)) for lo, hi in ranges)
            frac = _genesis_fraction(image, origin, roi, threshold)
            if frac < best_frac:
                best, best_frac = origin, frac
            if frac <= data.genesis_max_fraction:
                break
        picked.append((best, best_frac))
    return picked


def patch_origins(volume: dict, data: DataConfig, rng: np.random.Generator):
    """Where :func:`sample_patches` cuts a case: ``(image, label, origins, fractions)`` with the image and label
    padded to the ROI, the crops' origins and, for ``genesis`` / ``tissue`` sampling, their fractions (else
    ``None``). The draws are :func:`sample_patches`' own, so a crop cut elsewhere (on a GPU) is the same crop."""
    image, label = volume["image"], volume.get("label")
    if image.ndim != data.spatial_dims + 1:
        raise ValueError(
            f"case {volume.get('case_id')!r}: image shape {image.shape} does not match roi {data.roi} "
            f"(expected [C, {data.spatial_dims} spatial axes])"
        )
    if label is not None and label.shape != image.shape[1:]:
        raise ValueError(f"case {volume.get('case_id')!r}: label shape {label.shape} != image shape {image.shape[1:]}")
    roi = tuple(data.roi)
    image, label = pad_to_roi(image, label, roi)
    shape = image.shape[1:]
    n = data.patches_per_volume

    fractions, threshold = None, None
    if data.sampling == "genesis":
        threshold = genesis_threshold(data, volume.get("recipe"))
    if shape == roi:
        origins = [(0,) * data.spatial_dims]
    elif data.sampling == "grid":
        origins = grid_origins(shape, roi, data.grid_overlap)
    elif data.sampling == "classes":
        origins = _by_class(rng, label, n, shape, roi)
    elif data.sampling in ("balanced", "foreground"):
        origins = _balanced(rng, label, n, data.pos_fraction, shape, roi, by_class=data.sampling == "foreground")
    elif data.sampling == "genesis":
        origins, fractions = map(list, zip(*_genesis(rng, image, n, data, shape, roi, threshold)))
    elif data.sampling == "tissue":
        origins, fractions = map(list, zip(*_tissue(rng, image, n, data, shape, roi)))
    else:
        origins = [_uniform(rng, shape, roi) for _ in range(n)]
    if fractions is None and data.sampling in ("genesis", "tissue"):  # a whole-image crop
        fractions = [_genesis_fraction(image, o, roi, threshold) if data.sampling == "genesis"
                     else _tissue_fraction(image, o, roi, data.air_threshold) for o in origins]
    return image, label, origins, fractions


def sample_patches(volume: dict, data: DataConfig, rng: np.random.Generator) -> list[dict]:
    """Cut one preprocessed case into patches.

    Modes (``data.sampling``): ``random`` uniform crops; ``balanced`` a fraction ``data.pos_fraction`` of
    crops centred on a random labelled voxel (> 0), the rest uniform (all uniform when the case has no
    foreground); ``foreground`` as ``balanced``, but each centred crop on a voxel of a foreground class drawn
    uniformly among the foreground classes present (nnU-Net's foreground oversampling); ``classes`` each crop
    centred on a voxel of a class drawn uniformly among the classes present, background included (MONAI
    ``RandCropByLabelClasses`` with equal ratios; uniform without a label); ``genesis`` the
    Models Genesis chest CT rule: lung-dominant crops, at least
    ``data.genesis_margin`` voxels from the borders, whose fraction of voxels at or above
    ``data.genesis_hu`` (-150 HU, via the recipe's window; see :func:`genesis_threshold`), each weighted by
    a ``GENESIS_LOOKAHEAD``-slice look-ahead in depth (1 if dense, 0.5 if the next slice is, else 0), is
    at most ``data.genesis_max_fraction`` (each patch carries it as ``dense_fraction``; a value above
    the maximum flags a crop kept after ``GENESIS_MAX_ATTEMPTS`` draws failed); ``tissue`` crops for CT
    without lungs: uniform crops whose fraction of voxels above ``data.air_threshold`` is at least
    ``data.min_tissue_fraction`` (each patch carries ``tissue_fraction``; a value below the minimum flags
    a crop kept after ``GENESIS_MAX_ATTEMPTS`` draws failed); ``grid`` every sliding-window tile
    (``data.grid_overlap``). Volumes smaller than the ROI are padded, never skipped. When the ROI equals
    the (padded) spatial shape, e.g. a whole 2D chest X-ray, the single patch is the image itself.

    Args:
        volume: ``{"image": [C, *spatial], "label": [*spatial] | None, "target": [K] | None,
            "case_id", "split", ...}`` as returned by ``load_case``.
        data: ``roi``, ``patches_per_volume``, ``sampling`` and its parameters, ``patch_dtype``.
        rng: the case's generator, see :func:`case_rng`.

    Returns:
        Patches ``{"image": [C, *roi] (patch_dtype), "label": [*roi] uint8 (labelled cases only),
        "target": [K] float32 (when the case has one), "case_id", "split", "origin": int64 [ndim],
        "dense_fraction": float32 (``genesis``), "tissue_fraction": float32 (``tissue``)}``.
    """
    image, label, origins, fractions = patch_origins(volume, data, rng)
    roi = tuple(data.roi)
    target = volume.get("target")
    patches = []
    for i, origin in enumerate(origins):
        box = tuple(slice(o, o + r) for o, r in zip(origin, roi))
        patch = {
            "image": np.ascontiguousarray(image[(slice(None), *box)], dtype=data.patch_dtype),
            "case_id": volume["case_id"],
            "split": volume.get("split", ""),
            "origin": np.asarray(origin, dtype=np.int64),
        }
        if label is not None:
            patch["label"] = np.ascontiguousarray(label[box], dtype=np.uint8)
        if target is not None:
            patch["target"] = np.asarray(target, dtype=np.float32)
        if data.sampling == "genesis":
            patch["dense_fraction"] = np.float32(fractions[i])
        elif data.sampling == "tissue":
            patch["tissue_fraction"] = np.float32(fractions[i])
        patches.append(patch)
    return patches
