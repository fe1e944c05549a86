"""DICOM series as volumes: one case per ``SeriesInstanceUID`` of a folder tree (pydicom).

Slices are sorted by their ``ImagePositionPatient`` along the slice normal (the cross product of the
``ImageOrientationPatient`` row and column directions); ``RescaleSlope`` / ``RescaleIntercept`` give HU
(or the modality's units); the affine comes from the orientation, ``PixelSpacing`` and the slice positions,
in DICOM's LPS patient coordinates turned into the RAS+ world NIfTI uses. A series with slices missing,
several orientations or pixel grids, slice gaps that differ beyond a tolerance, or no image slices at all
is refused with the reason.
"""

from __future__ import annotations

import os
from collections import defaultdict

import numpy as np

from rayssl.data.io import BadInput

SPACING_TOLERANCE = 0.05
"""Largest relative difference between slice gaps of one series (5%)."""
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _read(path: str, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError) as e:
        raise BadInput(f"not a readable DICOM file ({type(e).__name__}: {e})", path) from None


def list_series(root: str) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """``{series uid: {"files": [...], "patient", "number", "modality", "description"}}`` of every DICOM file
    below ``root`` (headers only), and ``(path, reason)`` of ``.dcm`` files that are not DICOM."""
    series: dict[str, dict] = defaultdict(lambda: {"files": []})
    bad = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            try:
                ds = _read(path, pixels=False)
            except BadInput as e:
                if name.lower().endswith(".dcm"):
                    bad.append((path, str(e)))
                continue
            uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
            if not uid:
                bad.append((path, "DICOM file without a SeriesInstanceUID"))
                continue
            entry = series[uid]
            entry["files"].append(path)
            entry.setdefault("patient", str(getattr(ds, "PatientID", "") or ""))
            entry.setdefault("number", str(getattr(ds, "SeriesNumber", "") or ""))
            entry.setdefault("modality", str(getattr(ds, "Modality", "") or ""))
    return dict(series), bad


def read_series(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series as ``(volume [1, X, Y, Z] float32, affine 4x4 RAS)``: X along the rows' direction,
    Y along the columns', Z along the slice normal.

    Raises:
        BadInput: no image slices, mixed orientations or pixel grids, missing slices or unequal slice gaps.
    """
    where = os.path.dirname(paths[0]) if paths else ""
    slices = [ds for ds in (_read(p, pixels=True) for p in paths) if "PixelData" in ds]
    if not slices:
        raise BadInput("series holds no image slices (non-image SOP classes only)", where)
    orient = {tuple(np.round(np.asarray(ds.ImageOrientationPatient, float), 4)) for ds in slices}
    if len(orient) > 1:
        raise BadInput(f"series mixes {len(orient)} slice orientations (ImageOrientationPatient)", where)
    grids = {(int(ds.Rows), int(ds.Columns), tuple(np.round(np.asarray(ds.PixelSpacing, float), 4))) for ds in slices}
    if len(grids) > 1:
        raise BadInput(f"series mixes {len(grids)} pixel grids (Rows, Columns, PixelSpacing)", where)
    row, col = np.asarray(slices[0].ImageOrientationPatient, float).reshape(2, 3)
    normal = np.cross(row, col)
    position = {id(ds): float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)) for ds in slices}
    slices.sort(key=lambda ds: position[id(ds)])
    depth = np.array([position[id(ds)] for ds in slices])
    gaps = np.diff(depth)
    if len(slices) > 1:
        step = float(np.median(gaps))
        if step <= 0 or np.any(gaps <= 0):
            raise BadInput("series has slices at the same position", where)
        if np.any(np.abs(gaps - step) > SPACING_TOLERANCE * step):
            missing = int(np.sum(np.round(gaps / step) - 1))
            what = f"{missing} slice(s) missing" if missing > 0 and np.allclose(gaps / step, np.round(gaps / step), atol=0.05) \
                else f"unequal slice gaps {np.round(gaps.min(), 3)}..{np.round(gaps.max(), 3)} mm"
            raise BadInput(f"series: {what} (slice spacing {step:.3f} mm)", where)
    else:
        step = float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    dy, dx = (float(v) for v in slices[0].PixelSpacing)  # between rows, between columns
    volume = np.stack([ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1)
                       + float(getattr(ds, "RescaleIntercept", 0) or 0) for ds in slices], axis=-1)  # [rows, cols, Z]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dx, col * dy, normal * step
    lps[:3, 3] = np.asarray(slices[0].ImagePositionPatient, float)
    return np.ascontiguousarray(volume.transpose(1, 0, 2))[None], LPS_TO_RAS @ lps
