"""DICOM series as volumes: one case per ``SeriesInstanceUID`` of a folder tree (pydicom).

Slices are sorted by their ``ImagePositionPatient`` along the slice normal (the cross product of the
``ImageOrientationPatient`` row and column directions); ``RescaleSlope`` / ``RescaleIntercept`` give HU
(or the modality's units); the affine comes from the orientation, ``PixelSpacing`` and the slice positions,
in DICOM's LPS patient coordinates turned into the RAS+ world NIfTI uses. A series with slices missing,
several orientations or pixel grids, slice gaps that differ beyond a tolerance, no image slices at all, or
a slice whose geometry is missing or invalid (``ImageOrientationPatient``, ``ImagePositionPatient``,
``PixelSpacing``), multi-frame or multi-sample, or whose pixel data cannot be decoded is refused with the
reason.

Only regular files are opened (a FIFO, device or socket never is), at most :data:`DICOM_FILE_BYTES` each;
Deflated files are inflated only as far as needed (:data:`DICOM_HEADER_BYTES` for a header, plus the pixel
bytes the header declares), and a series is sized from its headers before its pixels are decoded.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections import defaultdict

import numpy as np

from rayssl.data import io as rio
from rayssl.data.io import BadInput
from rayssl.storage import special_kind

SPACING_TOLERANCE = 0.05
"""Largest relative difference between slice gaps of one series (5%)."""
DICOM_FILE_BYTES = 256 * 2**20
"""The largest DICOM file read (256 MiB on disk), and the most pixel data one file may declare (a
8192 x 8192 16-bit slice takes 128 MiB): a larger file or claim is refused before it is read or decoded."""
DICOM_HEADER_BYTES = 16 * 2**20
"""How far a Deflated file is inflated to read its header (16 MiB); reading its pixels inflates at most this
plus the pixel bytes its header declares, so a small file cannot inflate to gigabytes."""
ORTHOGONAL_TOLERANCE = 0.01
"""Largest |cos| between the row and column directions of ``ImageOrientationPatient`` (about 0.6 degrees)."""
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # float, double float, pixel data


def _open(path: str):
    """A binary file object of ``path`` once it is known to be a regular file of at most
    :data:`DICOM_FILE_BYTES` (checked before it is opened, and again on the opened file)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise BadInput(f"cannot read file: {e.strerror}", path) from None
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"not a regular file ({special_kind(path, st.st_mode) or 'a directory'}): never opened", path)
    if st.st_size > DICOM_FILE_BYTES:
        raise BadInput(f"file holds {st.st_size / 2**20:.0f} MiB, above the {DICOM_FILE_BYTES / 2**20:.0f} MiB a DICOM "
                       "file may have", path)
    f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK))  # never waits on a FIFO
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the check
        f.close()
        raise BadInput("not a regular file: never read", path)
    return f


def _inflate(f, limit: int, path: str) -> tuple[bytes, bool]:
    """At most ``limit + 1`` bytes of the raw deflate stream in ``f``, and whether the stream ended."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    out, size = [], 0
    try:
        while size <= limit and not d.eof:
            data = d.unconsumed_tail or f.read(1 << 20)
            if not data:
                break
            out.append(d.decompress(data, limit + 1 - size))
            size += len(out[-1])
    except zlib.error as e:
        raise BadInput(f"corrupt Deflated DICOM data ({e})", path) from None
    return b"".join(out), d.eof


def _read(path: str, pixels: bool, pixel_bytes: int = 0):
    """``(dataset, whether it has pixel data)`` of a DICOM file, read up to its pixel data unless ``pixels``.
    A Deflated file is inflated to at most :data:`DICOM_HEADER_BYTES` + ``pixel_bytes``."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_partial, read_preamble

    found = []

    def at_pixels(tag, vr, length) -> bool:
        if tag in _PIXEL_TAGS:
            found.append(tag)
            return not pixels
        return False

    limit = DICOM_HEADER_BYTES + pixel_bytes
    try:
        with _open(path) as f:
            preamble = read_preamble(f, False)  # dcmread's own steps, so that a Deflated body is inflated here
            meta = _read_file_meta_info(f)
            if meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
                f.seek(0)
                ds = read_partial(f, stop_when=at_pixels)
            else:
                body, ended = _inflate(f, limit, path)
                dataset = read_dataset(DicomBytesIO(body), False, True, stop_when=at_pixels)
                if not ended and (pixels or not found):  # the header (or the pixels) did not end within the limit
                    what = f"more than a header and the {pixel_bytes} pixel bytes it declares may take" if pixels \
                        else "without reaching its pixel data"
                    raise BadInput(f"Deflated data inflates past {limit / 2**20:.0f} MiB, {what} (a header may take "
                                   f"{DICOM_HEADER_BYTES // 2**20} MiB)", path)
                ds = pydicom.dataset.FileDataset(path, dataset, preamble, meta, False, True)
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError, TypeError) as e:
        raise BadInput(f"not a readable DICOM file ({type(e).__name__}: {e})", path) from None
    return ds, bool(found)


def list_series(root: str, allow_outside: bool = False) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """``{series uid: {"files": [...], "patient", "number", "modality", "description"}}`` of every DICOM file
    below ``root`` (headers only), and ``(path, reason)`` of ``.dcm`` files that are not DICOM, of FIFOs, devices
    and sockets, and of symlinks that lead out of ``root`` (unless ``allow_outside``): those are never opened."""
    series: dict[str, dict] = defaultdict(lambda: {"files": []})
    bad = []
    base = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            if not allow_outside and os.path.commonpath([base, os.path.realpath(path)]) != base:
                bad.append((path, f"outside the dataset root ({root}); set data.allow_outside_root=true to read it"))
                continue
            try:
                ds, _ = _read(path, pixels=False)
            except BadInput as e:
                if name.lower().endswith(".dcm") or special_kind(path):
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


def _numbers(ds, key: str, n: int, path: str) -> np.ndarray:
    """The ``n`` finite numbers of header element ``key``, or a BadInput naming the element."""
    try:
        value = ds.get(key)
        values = list(value) if hasattr(value, "__len__") and not isinstance(value, (str, bytes)) else [value]
        out = np.asarray([float(v) for v in values if v is not None and v != ""], dtype=float)
    except (TypeError, ValueError, OverflowError):
        out, value = np.zeros(0), "unreadable"
    if value is None:
        raise BadInput(f"slice has no {key}", path)
    if out.shape != (n,) or not np.isfinite(out).all():
        raise BadInput(f"{key} must be {n} finite numbers, got {value}", path)
    return out


def _geometry(ds, path: str) -> dict:
    """One slice's grid, directions, spacing, position and rescale, each checked."""
    frames, samples = int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1)
    if frames != 1 or samples != 1:
        raise BadInput(f"{frames} frame(s) of {samples} sample(s) per pixel in one file: only single-frame grayscale "
                       "slices are supported", path)
    rows, cols, bits = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), int(ds.get("BitsAllocated") or 0)
    if rows < 1 or cols < 1 or bits < 1:
        raise BadInput(f"slice has no pixel grid (Rows {rows}, Columns {cols}, BitsAllocated {bits})", path)
    if rows * cols * bits // 8 > DICOM_FILE_BYTES:
        raise BadInput(f"slice declares {rows} x {cols} pixels of {bits} bits ({rows * cols * bits / 8 / 2**20:.0f} "
                       f"MiB), above the {DICOM_FILE_BYTES / 2**20:.0f} MiB a DICOM file may decode to", path)
    orient = _numbers(ds, "ImageOrientationPatient", 6, path)
    norms = np.linalg.norm(orient.reshape(2, 3), axis=1)
    if norms.min() < 1e-6:
        raise BadInput(f"ImageOrientationPatient has a zero direction: {orient.tolist()}", path)
    row, col = orient[:3] / norms[0], orient[3:] / norms[1]
    cos = abs(float(np.dot(row, col)))
    if cos > ORTHOGONAL_TOLERANCE:
        what = "collinear" if cos > 1 - 1e-6 else f"not perpendicular ({np.degrees(np.arccos(cos)):.1f} degrees apart)"
        raise BadInput(f"ImageOrientationPatient row and column directions are {what}: {orient.tolist()}", path)
    spacing = _numbers(ds, "PixelSpacing", 2, path)
    if (spacing <= 0).any():
        raise BadInput(f"PixelSpacing must be positive, got {spacing.tolist()}", path)
    rescale = [float(ds.get(k) if ds.get(k) not in (None, "") else d) for k, d in (("RescaleSlope", 1), ("RescaleIntercept", 0))]
    if not np.isfinite(rescale).all() or rescale[0] == 0:
        raise BadInput(f"RescaleSlope / RescaleIntercept must be finite (a non-zero slope), got {rescale}", path)
    return {"grid": (rows, cols, *np.round(spacing, 4)), "orient": tuple(np.round(orient, 4)), "row": row, "col": col,
            "spacing": spacing, "position": _numbers(ds, "ImagePositionPatient", 3, path), "rescale": rescale,
            "bytes": rows * cols * bits // 8, "thickness": ds.get("SliceThickness")}


def read_series(paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM series as ``(volume [1, X, Y, Z] float32, affine 4x4 RAS)``: X along the rows' direction,
    Y along the columns', Z along the slice normal. The headers are read and checked first, then each slice's
    pixels are decoded into a volume sized from them (at most ``io.MAX_DECODED_BYTES``).

    Raises:
        BadInput: no image slices, invalid or mixed geometry, missing slices or unequal slice gaps, a volume
            above the budget, pixel data that cannot be decoded.
    """
    where = os.path.dirname(paths[0]) if paths else ""
    heads = [(p, _read(p, pixels=False)) for p in paths]
    slices = [(p, ds, _geometry(ds, p)) for p, (ds, has_pixels) in heads if has_pixels]
    if not slices:
        raise BadInput("series holds no image slices (non-image SOP classes only)", where)
    orient = {g["orient"] for _, _, g in slices}
    if len(orient) > 1:
        raise BadInput(f"series mixes {len(orient)} slice orientations (ImageOrientationPatient)", where)
    grids = {g["grid"] for _, _, g in slices}
    if len(grids) > 1:
        raise BadInput(f"series mixes {len(grids)} pixel grids (Rows, Columns, PixelSpacing)", where)
    first = slices[0][2]
    row, col = first["row"], first["col"]
    normal = np.cross(row, col)
    slices.sort(key=lambda s: float(np.dot(s[2]["position"], normal)))
    depth = np.array([float(np.dot(g["position"], normal)) for _, _, g in slices])
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
        thickness = _numbers(slices[0][1], "SliceThickness", 1, slices[0][0])[0] if first["thickness"] else 1.0
        if thickness < 0:
            raise BadInput(f"SliceThickness must be positive, got {thickness}", slices[0][0])
        step = thickness or 1.0
    rows, cols = first["grid"][:2]
    if rows * cols * len(slices) * 4 > rio.MAX_DECODED_BYTES:
        raise BadInput(f"series of {len(slices)} slices of {rows} x {cols} needs {rows * cols * len(slices) * 4 / 2**30:.1f} "
                       f"GiB as float32, above the {rio.MAX_DECODED_BYTES / 2**30:.0f} GiB budget for a decoded volume "
                       "(MAX_DECODED_BYTES)", where)
    volume = np.empty((rows, cols, len(slices)), np.float32)
    for z, (path, _, g) in enumerate(slices):
        ds, _ = _read(path, pixels=True, pixel_bytes=g["bytes"])
        try:
            pixels = ds.pixel_array
        except Exception as e:  # noqa: BLE001 - pydicom's decoders raise many types (a missing plugin: RuntimeError)
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", None) or "unknown transfer syntax"
            raise BadInput(f"cannot decode the pixel data ({name}): {' '.join(str(e).split())}", path) from None
        if pixels.shape != (rows, cols):
            raise BadInput(f"pixel data has shape {pixels.shape}, the header says {rows} x {cols}", path)
        volume[:, :, z] = pixels * g["rescale"][0] + g["rescale"][1]  # [rows, cols, Z]
    dy, dx = first["spacing"]  # between rows, between columns
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dx, col * dy, normal * step
    lps[:3, 3] = slices[0][2]["position"]
    return np.ascontiguousarray(volume.transpose(1, 0, 2))[None], LPS_TO_RAS @ lps
