"""``load_case``: read, validate and preprocess one case with a recipe (:mod:`rayssl.config.recipes`)."""

from __future__ import annotations

import numpy as np
import torch

from rayssl.data.io import MAX_DECODED_BYTES, BadInput, read_image_2d, read_label, read_volume
from rayssl.config.recipes import Recipe, get_recipe
from rayssl.data.sources import Case

AFFINE_TOL = 1e-3  # mm (and direction cosines): image/label affines closer than this are the same grid
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # NIfTI world axes (the affine maps to RAS+ mm)


def _percentile_rescale(image: np.ndarray, lo_pct: float, hi_pct: float) -> np.ndarray:
    # per channel: the lo/hi percentiles of the non-zero voxels -> 0/1, clipped; zero voxels stay 0
    out = np.zeros_like(image, dtype=np.float32)
    for c, ch in enumerate(image):
        nonzero = ch != 0
        if not nonzero.any():
            continue
        lo, hi = np.percentile(ch[nonzero], (lo_pct, hi_pct))
        if hi > lo:
            out[c] = np.clip((ch - lo) / (hi - lo), 0.0, 1.0)
        else:  # (almost) constant foreground: it is the signal
            out[c] = 1.0
        out[c][~nonzero] = 0.0
    return out


def affine_spacing(affine: np.ndarray, dims: int = 3) -> tuple[float, ...]:
    """Voxel size in mm: norms of the affine's direction columns."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:dims, :dims], axis=0))


def validate(image: np.ndarray, label: np.ndarray | None, affine: np.ndarray,
             label_affine: np.ndarray | None, spatial_dims: int) -> None:  # fmt: skip
    """Raise :class:`BadInput` for unusable image/label pairs (``image``: ``[C, *spatial]``)."""
    if spatial_dims and image.ndim != spatial_dims + 1:
        raise BadInput(f"expected {spatial_dims}D image data, got shape {tuple(image.shape[1:])}")
    if image.size == 0 or min(image.shape[1:]) == 0:
        raise BadInput(f"empty image, shape {tuple(image.shape[1:])}")
    bad = int((~np.isfinite(image)).sum())
    if bad:
        raise BadInput(f"image has {bad} NaN/Inf voxels")
    lo, hi = float(image.min()), float(image.max())
    if lo == hi:
        raise BadInput(f"image is constant (all voxels {lo:g})")
    if label is not None:
        if label.shape != image.shape[1:]:
            raise BadInput(f"label shape {tuple(label.shape)} != image shape {tuple(image.shape[1:])}")
        if label_affine is not None and not np.allclose(label_affine, affine, rtol=0, atol=AFFINE_TOL):
            diff = float(np.abs(np.asarray(label_affine) - np.asarray(affine)).max())
            raise BadInput(f"label affine differs from image affine (max difference {diff:.4g})")
        if label.min() < 0 or label.max() > 255:
            raise BadInput(f"label values {int(label.min())}..{int(label.max())} outside 0..255")


def _check_label_values(label: np.ndarray, declared: list[int], path: str) -> None:
    """Refuse a label map (values 0..255, :func:`validate`) that holds a value not in ``declared``."""
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=1))
    extra = sorted(set(present.tolist()) - {int(v) for v in declared})
    if extra:
        shown = ", ".join(map(str, extra[:10])) + (f" and {len(extra) - 10} more" if len(extra) > 10 else "")
        raise BadInput(f"label values {shown} are not among the labels the source declares "
                       f"({', '.join(map(str, sorted(declared)))})", path)


MAX_RESAMPLED_VOXELS = MAX_DECODED_BYTES // 32
"""The most voxels (all channels together) a volume may be resampled to: 64 Mi (e.g. 512 x 512 x 256), computed
from its affine and the target spacing before MONAI's ``Spacingd`` allocates anything. Resampling holds about 36
bytes per output voxel (its sampling grid, the output and intensity steps: 2.0 GB measured for 382^3), so this
keeps it near :data:`rayssl.data.io.MAX_DECODED_BYTES`."""


def resampled_shape(shape, affine: np.ndarray, spacing) -> np.ndarray:
    """The spatial shape MONAI's ``Spacing`` (``diagonal=False``) makes of ``shape`` voxels on ``affine`` at
    ``spacing`` mm, in floats (an overflowing result shows as huge or NaN, not as a wrapped int)."""
    from monai.data.utils import zoom_affine

    a = np.asarray(affine, np.float64)
    with np.errstate(all="ignore"):
        try:
            m = np.linalg.solve(zoom_affine(a, spacing, diagonal=False), a)[:-1, :-1]  # voxel -> target voxel
        except (np.linalg.LinAlgError, ValueError):
            return np.full(len(shape), np.nan)
        corners = np.array(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape(len(shape), -1)
        return np.round(np.ptp(m @ corners, axis=1) + 1.0)


def _check_resampling(image, target) -> None:
    """Refuse a volume (``[C, *spatial]`` MetaTensor) that would resample to nothing or to more than
    :data:`MAX_RESAMPLED_VOXELS` at ``target`` mm."""
    affine = image.affine.numpy()
    shape = resampled_shape(image.shape[1:], affine, target)
    voxels = image.shape[0] * float(np.prod(shape))
    what = (f"resampling {' x '.join(map(str, image.shape[1:]))} voxels of "
            f"{' x '.join(f'{v:.6g}' for v in affine_spacing(affine))} mm to {' x '.join(f'{v:g}' for v in target)} mm")
    if not np.isfinite(voxels) or shape.min() < 1:
        raise BadInput(f"{what} leaves no voxels (shape {shape.tolist()})")
    if voxels > MAX_RESAMPLED_VOXELS:
        raise BadInput(f"{what} would make {' x '.join(f'{v:.6g}' for v in shape)} voxels ({4 * voxels / 2**30:.3g} "
                       f"GiB as float32), above the {MAX_RESAMPLED_VOXELS // 2**20} Mi voxels a resampled volume may "
                       "have (MAX_RESAMPLED_VOXELS)")


def _preprocess_3d(r: Recipe, image: np.ndarray, label: np.ndarray | None, affine: np.ndarray,
                   spacing: tuple | None):  # fmt: skip
    import monai.transforms as mt
    from monai.data import MetaTensor

    keys = ["image"] + (["label"] if label is not None else [])
    aff = torch.as_tensor(affine, dtype=torch.float64)
    d = {"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(image, np.float32)), affine=aff)}
    if label is not None:  # label: [X, Y, Z] -> [1, X, Y, Z] for MONAI
        d["label"] = MetaTensor(torch.from_numpy(np.ascontiguousarray(label[None], np.float32)), affine=aff.clone())
    steps = []
    if r.orientation:
        steps.append(mt.Orientationd(keys, axcodes=r.orientation, labels=_RAS_LABELS))
    target = spacing or r.spacing
    if target is not None:
        modes = ("bilinear", "nearest")[: len(keys)]
        steps.append(mt.Spacingd(keys, pixdim=tuple(target), mode=modes, dtype=np.float32))
    if r.window is not None:
        lo, hi = r.window
        steps.append(mt.ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True))
    if r.crop_foreground:
        steps.append(mt.CropForegroundd(keys, source_key="image", allow_smaller=True))
    if r.zscore_nonzero:
        steps.append(mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True))
    for t in steps:
        if isinstance(t, mt.Spacingd):
            _check_resampling(d["image"], target)
        d = t(d)
    img = d["image"]
    out_affine = img.affine.numpy().astype(np.float64) if isinstance(img, MetaTensor) else np.asarray(affine)
    out_image = img.numpy().astype(np.float32) if isinstance(img, torch.Tensor) else np.asarray(img, np.float32)
    if r.percentiles is not None:
        out_image = _percentile_rescale(out_image, *r.percentiles)
    if out_image.size == 0 or not np.isfinite(out_image).all():  # validated again after resampling
        raise BadInput(f"preprocessing with recipe {r.name!r} leaves "
                       f"{'no voxels' if out_image.size == 0 else 'NaN/Inf voxels'}: shape {tuple(out_image.shape)}")
    out_label = None
    if label is not None:
        lab = d["label"]
        lab = lab.numpy() if isinstance(lab, torch.Tensor) else np.asarray(lab)
        out_label = np.rint(lab[0]).astype(np.uint8)
    return out_image, out_label, affine_spacing(out_affine), out_affine


def _preprocess_2d(r: Recipe, image: np.ndarray, size_2d: int):
    import monai.transforms as mt

    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))  # x: [1, H, W]
    h, w = x.shape[1:]
    if r.histeq:
        x = torch.as_tensor(mt.HistogramNormalize(num_bins=256, min=0, max=1)(x), dtype=torch.float32)
    x = mt.Resize((size_2d, size_2d), mode="bilinear", anti_aliasing=True)(x)
    x = torch.as_tensor(x).clamp(0.0, 1.0)
    spacing = (h / size_2d, w / size_2d)  # in input pixels
    return x.numpy().astype(np.float32), None, spacing, np.diag([*spacing, 1.0, 1.0])


def preprocess(recipe: str, image: np.ndarray, label: np.ndarray | None, affine: np.ndarray,
               spacing: tuple | None = None, size_2d: int = 224):  # fmt: skip
    """Apply a recipe to an already validated image.

    Args:
        recipe: a name in :data:`RECIPES`.
        image: ``[C, X, Y, Z]`` (or ``[1, H, W]`` for ``cxr``).
        label: ``[X, Y, Z]`` integer label map or ``None``.
        affine: 4x4 voxel-to-world affine of image and label.
        spacing: target spacing in mm overriding the recipe default.
        size_2d: output side for 2D recipes.

    Returns:
        ``(image float32 [C, *spatial], label uint8 [*spatial] or None, spacing, affine)``.
    """
    r = get_recipe(recipe)
    if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
        raise ValueError(f"spacing must be 3 positive mm values, got {spacing}")
    if r.histeq:
        if image.ndim != 3:
            raise BadInput(f"recipe {recipe!r} expects a [1, H, W] image, got shape {tuple(image.shape)}")
        return _preprocess_2d(r, image, size_2d)
    if r.name == "none":
        out = np.asarray(image, np.float32)
        lab = None if label is None else np.asarray(label).astype(np.uint8)
        dims = out.ndim - 1
        return out, lab, affine_spacing(affine, min(dims, 3)), np.asarray(affine, np.float64)
    if image.ndim != 4:
        raise BadInput(f"recipe {recipe!r} expects a [C, X, Y, Z] volume, got shape {tuple(image.shape)}")
    return _preprocess_3d(r, image, label, np.asarray(affine, np.float64), spacing)


def load_case(case: Case, recipe: str, spacing: tuple[float, ...] | None = None, size_2d: int = 224,
              channels: int | None = None, label_values: list[int] | None = None) -> dict:
    """Read, validate and preprocess one case.

    Args:
        case: the case (paths, split, target; its own ``recipe`` when it has one, a pool's case).
        recipe: a name in :data:`RECIPES`: the run's, used unless ``case.recipe`` is set.
        spacing: target spacing overriding the recipe default (3D).
        size_2d: output side for 2D images.
        channels: the channel count the source declares; a case with another is refused.
        label_values: the label values the source declares (MSD's ``labels``); a label map holding another
            value is refused, naming the values.

    Returns:
        ``{"case_id", "split", "image": float32 [C, *spatial], "label": uint8 [*spatial] | None,
        "target": float32 [K] | None, "spacing": tuple (mm after resampling), "affine": float64 4x4,
        "source_affine": the file's 4x4 affine, "source_shape": the file's spatial shape}``; ``affine`` and
        ``source_affine`` map the two voxel grids to the same world, so a prediction goes back to the file's
        grid with :func:`rayssl.data.geometry.to_source_grid`.

    Raises:
        BadInput: unreadable file, wrong dimensionality, NaN/Inf voxels, constant or empty image,
            image/label shape or affine mismatch, another channel count than ``channels``, a label value
            not in ``label_values``. ``e.path``
            names the case's first image when the failing file is not known more precisely.
    """
    recipe = case.recipe or recipe
    r = get_recipe(recipe)
    two_d = r.spatial_dims == 2 or (r.spatial_dims == 0 and case.image[0].lower().endswith(
        (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")))  # fmt: skip
    try:
        if two_d:
            if len(case.image) != 1:
                raise BadInput(f"expected one 2D image file, got {len(case.image)}")
            image, affine, label, label_affine = read_image_2d(case.image[0]), np.eye(4), None, None
        else:
            if case.kind == "dicom":
                from rayssl.data.dicom import read_series

                image, affine = read_series(case.image)
            else:
                image, affine = read_volume(case.image)
            if channels is not None and image.shape[0] != channels:
                raise BadInput(f"{image.shape[0]} channels (a 4D file's 4th axis is read as channels), but the "
                               f"source has {channels} (set data.channels if that is wrong)")
            label, label_affine = read_label(case.label) if case.label else (None, None)
        validate(image, label, affine, label_affine, 2 if two_d else 3)
        if label is not None and label_values is not None:
            _check_label_values(label, label_values, case.label)
        source_affine, source_shape = np.asarray(affine, np.float64), tuple(int(d) for d in image.shape[1:])
        image, label, out_spacing, out_affine = preprocess(recipe, image, label, affine, spacing, size_2d)
    except BadInput as e:
        if e.path is None:
            e.path = case.image[0]
        raise
    target = None if case.target is None else np.asarray(case.target, np.float32)
    return {"case_id": case.case_id, "split": case.split, "image": image, "label": label,
            "target": target, "spacing": tuple(out_spacing), "affine": out_affine,
            "source_affine": source_affine, "source_shape": source_shape}  # fmt: skip
