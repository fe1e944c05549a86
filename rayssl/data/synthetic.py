"""Synthetic, realistic-looking phantoms in the layouts of the real datasets.

* CT abdomen (MSD layout, like BTCV): HU int16, body with fat rim, liver, spleen, kidneys, aorta,
  vertebrae, stomach with air; organ label map.
* MRI brain (MSD Task01 layout): one 4D NIfTI per case, channels FLAIR/T1w/T1gd/T2w, skull-stripped
  brain on a zero background, tumour with nested labels 1 edema, 2 non-enhancing, 3 enhancing.
* Chest X-ray (ChestX-ray14 layout): 8-bit PNGs, ``Data_Entry_2017.csv``, ``train_val_list.txt`` /
  ``test_list.txt``; findings are drawn per image and rendered so a classifier can learn them.

Everything is seeded and vectorised with numpy; volumes are stored with an LPS-like affine
(``diag(-sx, -sy, sz)``, as scanners export them), so RAS reorientation is exercised downstream.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

CXR_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
# per-image probability of each finding (roughly following ChestX-ray14's ordering of prevalence)
_CXR_PREVALENCE = (0.14, 0.10, 0.14, 0.16, 0.10, 0.12, 0.08, 0.10, 0.08, 0.08, 0.08, 0.07, 0.08, 0.06)
CXR_COLUMNS = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
)  # fmt: skip

CT_LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "left kidney", 4: "right kidney",
             5: "aorta", 6: "vertebra", 7: "stomach"}  # fmt: skip
CT_HU = {1: 60.0, 2: 50.0, 3: 150.0, 4: 150.0, 5: 200.0, 6: 700.0, 7: 20.0}  # mean HU per organ
MRI_MODALITIES = {0: "FLAIR", 1: "T1w", 2: "T1gd", 3: "T2w"}
MRI_LABELS = {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"}
# tissue -> intensity per channel (FLAIR, T1w, T1gd, T2w), arbitrary MR units
_MRI_TISSUE = {
    "wm": (350, 600, 600, 250), "gm": (450, 450, 450, 400), "csf": (100, 150, 150, 900),
    "edema": (750, 380, 380, 750), "necrosis": (500, 250, 260, 850), "enhancing": (600, 400, 950, 600),
}  # fmt: skip
_MARKER = ".complete"


# --------------------------------------------------------------------------- helpers


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int = 5) -> np.ndarray:
    """Smooth random field, about N(0, 1) per voxel: coarse noise upsampled by separable Gaussian weights.

    (Separable upsampling: far cheaper than ``scipy.ndimage.zoom(order=3)`` on a volume.)
    """
    small = rng.standard_normal([max(2, min(coarse, s)) for s in shape])
    field = small
    for axis, (s, c) in enumerate(zip(shape, small.shape)):
        t = np.linspace(0.0, c - 1.0, s)[:, None] - np.arange(c)[None, :]  # [s, c] distance to knots
        wts = np.exp(-0.5 * (t / 0.6) ** 2)
        field = np.moveaxis(np.tensordot(wts / wts.sum(1, keepdims=True), field, axes=(1, axis)), 0, axis)
    field = (field - field.mean()).astype(np.float32)
    return field / max(float(field.std()), 1e-6)


def _texture(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 1.0) -> np.ndarray:
    """Fine texture, zero mean, unit std."""
    t = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return t / max(float(t.std()), 1e-6)


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised coordinates u (right +), v (anterior +) in [-1, 1], w (superior +) in [0, 1]."""
    x, y, z = (np.linspace(lo, 1.0, s, dtype=np.float32) for s, lo in zip(shape, (-1.0, -1.0, 0.0)))
    return x[:, None, None], y[None, :, None], z[None, None, :]


def _blob(u, v, w, centre, radii, angle: float, deform: np.ndarray, amount: float) -> np.ndarray:
    """Deformed, rotated (about the z axis) ellipsoid: boolean mask."""
    du, dv, dw = u - centre[0], v - centre[1], w - centre[2]
    c, s = np.cos(angle), np.sin(angle)
    ru, rv = c * du + s * dv, -s * du + c * dv
    d = (ru / radii[0]) ** 2 + (rv / radii[1]) ** 2 + (dw / radii[2]) ** 2
    return d + amount * deform < 1.0


def _save_nifti(path: Path, data_ras: np.ndarray, spacing, origin) -> None:
    """Write an array generated in RAS index order with an LPS-like affine diag(-sx, -sy, sz)."""
    sx, sy, sz = spacing
    nx, ny = data_ras.shape[:2]
    data = np.ascontiguousarray(data_ras[::-1, ::-1])  # index i now runs towards the left / posterior
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = (origin[0] + sx * (nx - 1), origin[1] + sy * (ny - 1), origin[2])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _write_dataset_json(root: Path, name: str, description: str, modality: dict, labels: dict,
                        training: list[dict], test: list[str], tensor: str) -> None:  # fmt: skip
    meta = {
        "name": name, "description": description, "reference": "rayssl synthetic phantoms",
        "licence": "CC-BY-SA 4.0", "release": "1.0", "tensorImageSize": tensor,
        "modality": {str(k): v for k, v in modality.items()}, "labels": {str(k): v for k, v in labels.items()},
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
    }  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))


# --------------------------------------------------------------------------- CT abdomen


def ct_phantom(rng: np.random.Generator, shape=(96, 96, 48)) -> tuple[np.ndarray, np.ndarray]:
    """One abdominal CT phantom in RAS index order.

    Returns:
        ``(hu, label)``: int16 HU ``[X, Y, Z]`` and uint8 organ labels (see ``CT_LABELS``).
    """
    u, v, w = _grid(shape)
    j = lambda s=0.05: rng.uniform(-s, s)  # noqa: E731  (position jitter)
    k = lambda: rng.uniform(0.85, 1.15)  # noqa: E731  (size factor)
    # body: elliptic cylinder with a wobbly boundary that drifts along z
    a, b = 0.88 + j(0.04), 0.66 + j(0.04)
    theta = np.arctan2(v / b, u / a)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    wobble = (0.035 * np.sin(3 * theta + rng.uniform(0, 6.3)) + 0.025 * np.sin(5 * theta + rng.uniform(0, 6.3))
              + 0.03 * np.sin(2 * np.pi * w + rng.uniform(0, 6.3)))  # fmt: skip
    edge = 1.0 + wobble
    body = rho < edge
    fat = body & (rho > edge - rng.uniform(0.09, 0.14))
    inner = body & ~fat

    label = np.zeros(shape, np.uint8)
    fields = [_smooth_field(rng, shape) for _ in range(3)]

    def deform() -> np.ndarray:
        wts = rng.standard_normal(3)
        return sum(wt * f for wt, f in zip(wts, fields)) / np.linalg.norm(wts)

    def put(value: int, mask: np.ndarray) -> None:
        label[mask & inner & (label == 0)] = value

    # vertebral body: posterior midline cylinder, interrupted by discs every ~10 slices
    disc_phase = rng.uniform(0, 1)
    disc = (np.cos(2 * np.pi * (w * shape[2] / 10.0 + disc_phase)) > 0.8) & np.ones_like(u, bool)
    vert = ((u - j(0.02)) / 0.15) ** 2 + ((v + 0.47) / 0.13) ** 2 < 1.0
    put(6, vert & ~disc)
    put(5, ((u + 0.1 + j(0.02)) / 0.075) ** 2 + ((v + 0.24 + j(0.02)) / 0.075) ** 2 < 1.0)
    put(3, _blob(u, v, w, (-0.36 + j(), -0.36 + j(), 0.45 + j()), (0.12 * k(), 0.15 * k(), 0.2 * k()),
                 rng.uniform(-0.5, -0.2), deform(), 0.15))  # fmt: skip
    put(4, _blob(u, v, w, (0.36 + j(), -0.36 + j(), 0.38 + j()), (0.12 * k(), 0.15 * k(), 0.2 * k()),
                 rng.uniform(0.2, 0.5), deform(), 0.15))  # fmt: skip
    put(2, _blob(u, v, w, (-0.58 + j(), -0.15 + j(), 0.72 + j()), (0.14 * k(), 0.22 * k(), 0.2 * k()),
                 rng.uniform(-0.6, -0.3), deform(), 0.25))  # fmt: skip
    stomach = _blob(u, v, w, (-0.3 + j(), 0.3 + j(), 0.75 + j()), (0.22 * k(), 0.16 * k(), 0.16 * k()),
                    rng.uniform(-0.3, 0.3), deform(), 0.25)  # fmt: skip
    put(7, stomach)
    put(1, _blob(u, v, w, (0.42 + j(), 0.08 + j(), 0.72 + j()), (0.38 * k(), 0.42 * k(), 0.32 * k()),
                 rng.uniform(-0.3, 0.1), deform(), 0.3))  # fmt: skip

    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = 40.0 + 8.0 * _texture(rng, shape, 1.5)[body]  # muscle / soft tissue
    hu[fat] = -100.0
    visceral = inner & (label == 0) & (_smooth_field(rng, shape, 9) > 0.6)  # mesenteric / perirenal fat
    hu[visceral] = -90.0 + 10.0 * _texture(rng, shape, 1.0)[visceral]
    hu[vert & disc & inner] = 90.0
    amp = {1: 8.0, 2: 7.0, 3: 15.0, 4: 15.0, 5: 8.0, 6: 80.0, 7: 6.0}
    tex = _texture(rng, shape, 1.0)
    for value, mean in CT_HU.items():
        m = label == value
        hu[m] = mean + amp[value] * tex[m]
    # kidney medulla darker than cortex, stomach gas in its anterior part (patient supine)
    for value in (3, 4):
        m = label == value
        core = ndimage.binary_erosion(m, iterations=2)
        hu[core] -= 40.0
    gas = (label == 7) & (v > np.where(label == 7, v, -2).max(axis=1, keepdims=True) - 0.08)
    hu[gas] = -1000.0 + 20.0 * tex[gas]
    # smooth multiplicative bias on attenuation (HU + 1000), then quantum noise
    hu = (hu + 1000.0) * (1.0 + 0.004 * _smooth_field(rng, shape, 3)) - 1000.0
    hu += rng.normal(0.0, 15.0, shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), label


def make_ct_phantoms(root: str | Path, n: int = 8, seed: int = 0, shape=(96, 96, 48),
                     spacing=(1.6, 1.6, 3.0)) -> Path:  # fmt: skip
    """Write ``n`` abdominal CT phantoms in the MSD layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``).

    Args:
        root: output folder.
        n: number of cases.
        seed: random seed; the same seed writes identical files.
        shape: volume shape ``(X, Y, Z)``.
        spacing: voxel spacing in mm.

    Returns:
        ``root`` as a Path.
    """
    if n < 1 or len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"need n >= 1 and a 3D shape of at least 8 voxels per axis, got n={n}, shape={shape}")
    root = Path(root)
    rng = np.random.default_rng([seed, 0xC7])
    training = []
    origin = (-spacing[0] * (shape[0] - 1) / 2, -spacing[1] * (shape[1] - 1) / 2, -spacing[2] * shape[2] - 300.0)
    for i in range(n):
        hu, label = ct_phantom(np.random.default_rng(rng.integers(2**63)), tuple(shape))
        name = f"ct_{i:03d}.nii.gz"
        _save_nifti(root / "imagesTr" / name, hu, spacing, origin)
        _save_nifti(root / "labelsTr" / name, label, spacing, origin)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    _write_dataset_json(root, "SyntheticAbdomenCT", "Abdominal CT phantoms (HU) with organ labels",
                        {0: "CT"}, CT_LABELS, training, [], "3D")  # fmt: skip
    return root


# --------------------------------------------------------------------------- MRI brain


def mri_phantom(rng: np.random.Generator, shape=(64, 64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """One skull-stripped brain MRI with a tumour, RAS index order.

    Returns:
        ``(image, label)``: float32 ``[X, Y, Z, 4]`` (FLAIR, T1w, T1gd, T2w; zero outside the brain)
        and uint8 labels 0..3 (``MRI_LABELS``).
    """
    u, v, w = _grid(shape)
    w = 2 * w - 1  # centre the z axis too
    deform = _smooth_field(rng, shape, 4)
    brain = _blob(u, v, w, (0, 0, 0), (0.78, 0.9, 0.72), rng.uniform(-0.1, 0.1), deform, 0.04)
    wm = _blob(u, v, w, (0, 0.02, 0.05), (0.55, 0.68, 0.5), 0.0, _smooth_field(rng, shape, 6), 0.25) & brain
    ventricles = (_blob(u, v, w, (-0.1, 0.05, 0.1), (0.07, 0.25, 0.12), 0.1, deform, 0.05)
                  | _blob(u, v, w, (0.1, 0.05, 0.1), (0.07, 0.25, 0.12), -0.1, deform, 0.05))  # fmt: skip
    # tumour: centre in one hemisphere, edema outermost, core inside, enhancing rim of the core
    c = (rng.choice([-1, 1]) * rng.uniform(0.25, 0.4), rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.3))
    r = rng.uniform(0.22, 0.3)
    tdeform = _smooth_field(rng, shape, 5)
    edema = _blob(u, v, w, c, (r, r * 1.1, r), rng.uniform(0, 3), tdeform, 0.2) & brain
    rc = r * rng.uniform(0.6, 0.72)
    core = _blob(u, v, w, c, (rc, rc, rc), 0.0, tdeform, 0.1) & edema
    necrosis = _blob(u, v, w, c, (rc * 0.65, rc * 0.65, rc * 0.65), 0.0, tdeform, 0.05) & core

    tissue = np.zeros(shape, np.uint8)  # index into the tissue table
    names = ["bg", "gm", "wm", "csf", "edema", "enhancing", "necrosis"]
    for idx, mask in enumerate([brain, wm, ventricles & brain, edema, core, necrosis], start=1):
        tissue[mask] = idx
    label = np.zeros(shape, np.uint8)
    label[edema] = 1
    label[core] = 3
    label[necrosis] = 2
    table = np.zeros((len(names), 4), np.float32)
    for i, nm in enumerate(names[1:], start=1):
        table[i] = _MRI_TISSUE[nm]
    image = table[tissue]  # [X, Y, Z, 4]
    tex = _texture(rng, shape, 1.0)
    for ch in range(4):
        bias = 1.0 + 0.08 * _smooth_field(rng, shape, 3)
        noise = rng.normal(0.0, 12.0, shape).astype(np.float32)
        image[..., ch] = (image[..., ch] * (1.0 + 0.04 * tex) + noise) * bias
    image = np.where(brain[..., None], np.maximum(image, 1.0), 0.0).astype(np.float32)
    return image, label


def make_mri_phantoms(root: str | Path, n: int = 6, seed: int = 0, shape=(64, 64, 64),
                      spacing=(1.0, 1.0, 1.0)) -> Path:  # fmt: skip
    """Write ``n`` brain-tumour MRI phantoms in the MSD Task01 layout (4D NIfTI, channels last).

    Args:
        root: output folder.
        n: number of cases.
        seed: random seed; the same seed writes identical files.
        shape: spatial shape ``(X, Y, Z)``.
        spacing: voxel spacing in mm.

    Returns:
        ``root`` as a Path.
    """
    if n < 1 or len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"need n >= 1 and a 3D shape of at least 16 voxels per axis, got n={n}, shape={shape}")
    root = Path(root)
    rng = np.random.default_rng([seed, 0x3B])
    origin = tuple(-s * (d - 1) / 2 for s, d in zip(spacing, shape))
    training = []
    for i in range(n):
        image, label = mri_phantom(np.random.default_rng(rng.integers(2**63)), tuple(shape))
        name = f"BRATS_{i:03d}.nii.gz"
        _save_nifti(root / "imagesTr" / name, image, spacing, origin)
        _save_nifti(root / "labelsTr" / name, label, spacing, origin)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    _write_dataset_json(root, "SyntheticBrainTumour", "Multi-modal brain MRI phantoms with tumour sub-regions",
                        MRI_MODALITIES, MRI_LABELS, training, [], "4D")  # fmt: skip
    return root


# --------------------------------------------------------------------------- chest X-ray


def cxr_phantom(rng: np.random.Generator, findings: set[str], size: int = 256) -> np.ndarray:
    """One PA chest radiograph (uint8 ``[H, W]``, bright = dense) showing ``findings``.

    Image x runs from the patient's right (left of the image) to the left; y from apex to abdomen.
    """
    unknown = set(findings) - set(CXR_FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings {sorted(unknown)}; expected some of {list(CXR_FINDINGS)}")
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j].astype(np.float32)
    # global acquisition randomness first, so a finding changes only its own region of the image
    gain, gamma = rng.uniform(0.9, 1.1), rng.uniform(0.85, 1.15)
    exposure = 0.03 * _smooth_field(rng, (size, size), 3)
    noise = rng.normal(0.0, 0.015, (size, size)).astype(np.float32)
    j = lambda s=0.03: rng.uniform(-s, s)  # noqa: E731
    f = findings
    img = np.full((size, size), 0.04, np.float32)
    body = (np.abs(x) < 0.86 + 0.08 * y + j()) & (y > -0.92 + 0.3 * x**2)
    img[body] = 0.5
    # lungs: ellipses, larger and darker with emphysema, smaller with atelectasis
    scale = 1.1 if "Emphysema" in f else 1.0
    lungs, rhos = [], []
    for side, cx in ((-1, -0.38 + j()), (1, 0.38 + j())):
        ry = (0.6 + j()) * scale * (0.85 if "Atelectasis" in f and side == -1 else 1.0)
        rx = (0.27 if side == 1 else 0.3) * scale
        cy = -0.08 + j() + (0.05 if scale > 1 else 0)
        rho = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        lung = (rho < 1) & (y < cy + ry * 0.75 - 0.25 * (x - cx) ** 2)  # flattened by the diaphragm dome
        lungs.append(lung)
        rhos.append(rho)
    lung = lungs[0] | lungs[1]
    markings = np.abs(_texture(rng, (size, size), 1.5)) * 0.06
    img[lung] = (0.14 if "Emphysema" not in f else 0.08) + markings[lung] * (0.4 if "Emphysema" in f else 1.0)
    # ribs (posterior arcs) and clavicles
    ribs = (np.sin((y + 0.45 * x**2) * 22 + rng.uniform(0, 6.3)) > 0.55) & body & (y < 0.55)
    img[ribs] += 0.12
    img[(np.abs(y + 0.72 - 0.2 * np.abs(x)) < 0.03) & (np.abs(x) > 0.08) & (np.abs(x) < 0.6)] += 0.2
    img[(np.abs(x) < 0.12) & body] = np.maximum(img[(np.abs(x) < 0.12) & body], 0.6)  # mediastinum/spine
    # heart, left of the image centre (patient's left), bigger with cardiomegaly (CTR > 0.5)
    hs = 1.45 if "Cardiomegaly" in f else 1.0
    heart = ((x - 0.12 - j()) / (0.24 * hs)) ** 2 + ((y - 0.32 - j()) / (0.24 + 0.05 * hs)) ** 2 < 1
    img[heart] = 0.68
    lungs = [m & ~heart for m in lungs]
    lung = lungs[0] | lungs[1]
    img[body & (y > 0.55 + 0.15 * np.abs(x)) & ~lung] = 0.62  # diaphragm / abdomen

    def blob(cx, cy, r, amp, soft=0.3):
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / r
        return amp * np.clip((1 + soft - d) / soft, 0, 1)

    side = rng.integers(2)
    lcx = (-0.38, 0.38)[side]
    if "Effusion" in f:  # fluid fills the lung base with a meniscus rising laterally
        base = lungs[side] & (y > 0.12 - 0.4 * np.abs(x - lcx) + j(0.05))
        img[base] = 0.6
    if "Pneumothorax" in f:  # dark lateral/apical rim without lung markings, and a pleural line
        rim = lungs[side] & (rhos[side] > 0.78) & ((x - lcx) * (1 if side else -1) > -0.05)
        img[rim] = 0.01
        img[lungs[side] & (np.abs(rhos[side] - 0.78) < 0.02)] += 0.15
    if "Pleural_Thickening" in f:
        img[lungs[side] & (rhos[side] > 0.88)] += 0.3
    if "Mass" in f:
        img += blob(lcx + j(0.1), -0.1 + j(0.2), rng.uniform(0.1, 0.15), 0.4) * lungs[side]
    if "Nodule" in f:
        for _ in range(rng.integers(1, 4)):
            s = rng.integers(2)
            img += blob((-0.38, 0.38)[s] + j(0.15), j(0.4), rng.uniform(0.035, 0.05), 0.4) * lungs[s]
    if "Infiltration" in f:  # patchy hazy opacity
        patch = _smooth_field(rng, (size, size), 8) > 0.7
        img[patch & lungs[side]] += 0.2
    if "Pneumonia" in f:  # lobar-like opacity, fuzzy margin, lower zone
        img += blob(lcx + j(0.08), 0.25 + j(0.1), 0.22, 0.3, soft=0.6) * lungs[side]
    if "Consolidation" in f:  # dense, homogeneous, upper zone
        img += blob(lcx + j(0.08), -0.35 + j(0.1), 0.2, 0.45, soft=0.15) * lungs[side]
    if "Edema" in f:  # bilateral perihilar (butterfly) haze
        hilum = np.exp(-(((np.abs(x) - 0.22) / 0.2) ** 2 + ((y + 0.05) / 0.35) ** 2))
        img += 0.25 * hilum * lung
    if "Fibrosis" in f:  # reticular pattern, lower and peripheral zones
        net = (np.abs(np.sin(x * 60)) < 0.25) | (np.abs(np.sin(y * 60 + x * 20)) < 0.25)
        img[net & lung & (y > 0.0)] += 0.15
    if "Atelectasis" in f:  # plate-like linear opacity in the (smaller) right lower lung
        img[lungs[0] & (np.abs(y - 0.2 - 0.2 * x) < 0.03)] += 0.3
    if "Hernia" in f:  # retrocardiac rounded opacity with an air-fluid level
        h = ((x - 0.05) / 0.16) ** 2 + ((y - 0.55) / 0.12) ** 2 < 1
        img[h] = 0.72
        img[h & (y < 0.53)] = 0.1
    img = ndimage.gaussian_filter(img, 0.8)
    img = np.clip(img * gain + exposure + noise, 0, 1) ** gamma
    return np.rint(img * 255).astype(np.uint8)


def make_cxr_phantoms(root: str | Path, n: int = 64, seed: int = 0, size: int = 256) -> Path:
    """Write ``n`` chest X-ray phantoms in the ChestX-ray14 layout.

    ``images/<patient:08d>_<follow-up:03d>.png``, ``Data_Entry_2017.csv`` with the real columns,
    ``train_val_list.txt`` / ``test_list.txt`` split by patient (about 80/20).

    Args:
        root: output folder.
        n: number of images (patients have 1 to 3 follow-ups).
        seed: random seed; the same seed writes identical files.
        size: image side in pixels.

    Returns:
        ``root`` as a Path.
    """
    from PIL import Image

    if n < 2 or size < 32:
        raise ValueError(f"need n >= 2 images of size >= 32, got n={n}, size={size}")
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0xC8])
    rows, patients, pid = [], [], 0
    while len(rows) < n:
        pid += 1
        patients.append(pid)
        age, sex = int(rng.integers(18, 90)), str(rng.choice(["M", "F"]))
        for fu in range(min(int(rng.integers(1, 4)), n - len(rows))):
            found = [name for name, p in zip(CXR_FINDINGS, _CXR_PREVALENCE) if rng.random() < p]
            pix = cxr_phantom(np.random.default_rng(rng.integers(2**63)), set(found), size)
            name = f"{pid:08d}_{fu:03d}.png"
            Image.fromarray(pix, mode="L").save(root / "images" / name)
            width, height = int(rng.choice([2500, 2992, 3056])), int(rng.choice([2048, 2544, 2991]))
            rows.append([name, "|".join(found) or "No Finding", fu, pid, age, sex,
                         str(rng.choice(["PA", "AP"], p=[0.7, 0.3])), width, height, 0.143, 0.143])  # fmt: skip
    with open(root / "Data_Entry_2017.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CXR_COLUMNS)
        writer.writerows(rows)
    order = rng.permutation(patients)
    n_test = max(1, round(0.2 * len(patients))) if len(patients) > 1 else 0
    test_pids = set(order[:n_test].tolist())
    test = [r[0] for r in rows if r[3] in test_pids]
    (root / "train_val_list.txt").write_text("".join(r[0] + "\n" for r in rows if r[3] not in test_pids))
    (root / "test_list.txt").write_text("".join(name + "\n" for name in test))
    return root


# --------------------------------------------------------------------------- cache


def synthetic_root(kind: str, n: int, seed: int, root: str | None = None) -> Path:
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "rayssl" / "synthetic"
    return base / f"{kind}-n{n}-s{seed}"


def ensure_synthetic(kind: str, n: int, seed: int, root: str | None = None) -> Path:
    """Generate a synthetic dataset once and reuse it.

    The dataset goes to ``<root>/<kind>-n<N>-s<seed>`` (``root`` defaults to ``~/.cache/rayssl/synthetic``).
    It is written to a temporary folder, a completion marker is written last, and the folder is then
    renamed into place, so an interrupted run is regenerated and concurrent callers do not collide.

    Args:
        kind: ``"ct"``, ``"mri"`` or ``"cxr"``.
        n: number of cases / images.
        seed: random seed.
        root: parent folder of the generated datasets.

    Returns:
        The dataset folder (MSD layout for ct/mri, ChestX-ray14 layout for cxr).
    """
    makers = {"ct": make_ct_phantoms, "mri": make_mri_phantoms, "cxr": make_cxr_phantoms}
    if kind not in makers:
        raise ValueError(f"unknown synthetic kind {kind!r}; expected one of {sorted(makers)}")
    final = synthetic_root(kind, n, seed, root)
    if (final / _MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    makers[kind](tmp, n=n, seed=seed)
    (tmp / _MARKER).write_text(json.dumps({"kind": kind, "n": n, "seed": seed}))
    if final.exists() and not (final / _MARKER).is_file():
        shutil.rmtree(final, ignore_errors=True)  # an incomplete earlier attempt
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (final / _MARKER).is_file():
            raise
    return final
