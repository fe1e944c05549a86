"""Reading NIfTI volumes and 2D images from local paths or ``s3://`` / ``gs://`` / ``file://`` URIs.

Everything goes through ``pyarrow.fs`` as bytes and is decoded in memory (nibabel for NIfTI, Pillow
for PNG/JPEG), so the same code reads a laptop folder and a bucket. Every failure is a
:class:`BadInput` whose message is a short reason; callers attach the path and quarantine the input.
"""

from __future__ import annotations

import io
import math
import os
import posixpath
import zlib

import nibabel as nib
import numpy as np
import pyarrow.fs as pafs

_GZIP_MAGIC = b"\x1f\x8b"


class BadInput(Exception):
    """An input that cannot be used; ``str(e)`` is the human-readable reason (e.g. ``'not a NIfTI file'``).

    Args:
        reason: short, specific reason.
        path: the offending input, when known.
    """

    def __init__(self, reason: str, path: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.path = path


def is_uri(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """An absolute local path (``~`` expanded; Ray workers may run in another directory); URIs unchanged."""
    path = str(path).strip()
    return path if is_uri(path) or not path else os.path.abspath(os.path.expanduser(path))


def join(root: str, *parts: str) -> str:
    """Join path parts for a local path or a URI (``os.path.join`` would break ``s3://``)."""
    return posixpath.join(str(root), *parts) if is_uri(root) else os.path.join(root, *parts)


def open_uri(path: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or an ``s3://``, ``gs://``, ``file://`` URI."""
    path = str(path)
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), absolute(path)


def is_dir(path: str) -> bool:
    """True if ``path`` is an existing directory (local or remote)."""
    if not is_uri(path):
        return os.path.isdir(os.path.expanduser(path))
    fs, p = open_uri(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def exists(path: str) -> bool:
    """True if ``path`` is an existing file (local or remote)."""
    if not is_uri(path):
        return os.path.isfile(os.path.expanduser(path))
    fs, p = open_uri(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def read_bytes(path: str) -> bytes:
    """All bytes of a file.

    Raises:
        BadInput: ``'file not found'`` or ``'cannot read file: ...'``.
    """
    try:
        fs, p = open_uri(path)
        info = fs.get_file_info(p)
        if info.type == pafs.FileType.NotFound:
            raise BadInput("file not found", path)
        if info.type != pafs.FileType.File:
            raise BadInput("not a file", path)
        with fs.open_input_stream(p, compression=None) as f:  # no decompression by extension
            return f.readall()
    except BadInput:
        raise
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read file: {e}", path) from None


MAX_VOLUME_BYTES = 8 * 2**30
"""The largest voxel array a NIfTI header may claim (8 GiB, a 1024 x 1024 x 2048 float32 volume): a larger
claim is refused before anything is allocated or decompressed."""


def _gunzip(raw: bytes, limit: int, path: str) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a gzip stream, and whether the stream ended within them (memory stays
    bounded by ``limit`` whatever the stream claims or expands to)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = []
    size = 0
    try:
        chunk = d.decompress(raw, limit)
        while True:
            out.append(chunk)
            size += len(chunk)
            if d.eof or size >= limit or not d.unconsumed_tail:
                break
            chunk = d.decompress(d.unconsumed_tail, limit - size)
    except zlib.error:
        raise BadInput("truncated or corrupt gzip data", path) from None
    return b"".join(out), d.eof


def _head(raw: bytes, path: str) -> bytes:
    """The first 540 bytes of a file's content (decompressed when it is gzip), enough for either header."""
    if raw[:2] != _GZIP_MAGIC:
        return raw[:540]
    head, ended = _gunzip(raw, 540, path)
    if len(head) < 348 and not ended:
        raise BadInput(f"truncated or corrupt gzip data: the stream breaks off after {len(head)} bytes", path)
    return head


def _nifti_layout(head: bytes, path: str):
    """``(image class, header, bytes the header says the file holds)`` from a file's first bytes."""
    # NIfTI-1: sizeof_hdr 348 and magic "n+1"; NIfTI-2: 540 and "n+2" (either byte order).
    for size, klass in ((348, nib.Nifti1Image), (540, nib.Nifti2Image)):
        for endian, order in (("<", "little"), (">", "big")):
            if len(head) >= size and int.from_bytes(head[:4], order) == size:
                try:
                    header = klass.header_class(head[:size], endianness=endian, check=False)
                    shape, dtype = header.get_data_shape(), header.get_data_dtype()
                    offset = int(header.get_data_offset())
                except Exception as e:  # nibabel raises many types for damaged headers
                    raise BadInput(f"unreadable NIfTI header: {e}", path) from None
                if any(int(d) < 0 for d in shape) or offset < 0:
                    raise BadInput(f"unreadable NIfTI header: shape {tuple(shape)}, data offset {offset}", path)
                return klass, header, offset + math.prod(int(d) for d in shape) * dtype.itemsize
    raise BadInput("not a NIfTI file", path)


def read_nifti_header(path: str):
    """The NIfTI header of a file (its first 64 KiB only), e.g. to write an output like it."""
    try:
        fs, p = open_uri(path)
        with fs.open_input_stream(p, compression=None) as f:
            raw = f.read(65536)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read file: {e}", path) from None
    return _nifti_layout(_head(raw, path), path)[1]


def write_nifti_like(values: np.ndarray, reference: str | None, path, affine: np.ndarray | None = None) -> None:
    """Write ``values`` (on the reference file's voxel grid) as NIfTI with the reference NIfTI's header: its
    affine (qform and sform), units and description; without a reference (a DICOM series), with ``affine``.
    Atomically (a temporary file, then a rename), so an interrupted write never looks finished."""
    import tempfile
    from pathlib import Path

    if reference is None:
        img = nib.Nifti1Image(values, np.asarray(affine, np.float64))
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
        img.header.set_xyzt_units("mm")
    else:
        header = read_nifti_header(reference).copy()
        klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        header.set_data_dtype(values.dtype)
        header.set_data_shape(values.shape)
        header.set_slope_inter(1.0, 0.0)
        header.set_intent("none")
        img = klass(values, header.get_best_affine(), header=header)
        img.set_qform(header.get_qform(), int(header["qform_code"]) or None)
        img.set_sform(header.get_sform(), int(header["sform_code"]) or None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".nii.gz", dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def nifti_shape(path: str) -> tuple[int, ...]:
    """The voxel shape a NIfTI file's header declares, reading only the file's first 64 KiB.

    Raises:
        BadInput: missing or unreadable file, not a NIfTI file.
    """
    return tuple(int(d) for d in read_nifti_header(path).get_data_shape())


def _describe(header) -> str:
    shape, dtype = tuple(int(d) for d in header.get_data_shape()), header.get_data_dtype()
    return f"{' x '.join(map(str, shape)) or 'no'} voxels of {dtype}"


def _decode_nifti(raw: bytes, path: str) -> nib.Nifti1Image:
    """The image in ``raw`` (``.nii`` or ``.nii.gz`` bytes), after checking that the voxel data its header
    claims is at most :data:`MAX_VOLUME_BYTES` and is really in the file: a lying header is refused before
    anything is allocated, and decompression never goes past the claimed size."""
    gz = raw[:2] == _GZIP_MAGIC
    klass, header, needed = _nifti_layout(_head(raw, path), path)
    if needed - int(header.get_data_offset()) > MAX_VOLUME_BYTES:
        raise BadInput(f"header claims {_describe(header)} ({needed / 2**30:.1f} GiB), above the "
                       f"{MAX_VOLUME_BYTES / 2**30:.0f} GiB a volume may have", path)
    if gz:
        raw, ended = _gunzip(raw, needed, path)
        if len(raw) < needed:
            why = "the gzip stream ends" if ended else "the gzip data is truncated or corrupt"
            raise BadInput(f"truncated: header claims {_describe(header)} ({needed} bytes with the header) but "
                           f"the file holds {len(raw)} bytes ({why})", path)
    elif len(raw) < needed:
        raise BadInput(f"truncated: header claims {_describe(header)} ({needed} bytes with the header) but the "
                       f"file holds {len(raw)} bytes", path)
    try:
        return klass.from_bytes(raw)
    except Exception as e:  # nibabel raises many types for damaged headers
        raise BadInput(f"unreadable NIfTI header: {e}", path) from None


def _nifti_array(path: str) -> tuple[np.ndarray, np.ndarray]:
    img = _decode_nifti(read_bytes(path), path)
    if 0 in img.shape:
        raise BadInput(f"empty image, shape {tuple(int(d) for d in img.shape)}", path)
    dtype = img.header.get_data_dtype()
    if dtype.kind == "c":
        raise BadInput(f"complex voxels ({dtype}) are not supported: store the magnitude or one part", path)
    if dtype.fields is not None:
        raise BadInput(f"RGB / structured voxels ({', '.join(dtype.names)}) are not supported: store one "
                       "grayscale value per voxel", path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise BadInput(f"the affine is not an invertible voxel-to-world map (all zero, collapsed or non-finite "
                       f"axes): {np.round(affine[:3, :3], 6).tolist()}", path)
    try:
        data = np.asanyarray(img.dataobj)  # applies scl_slope/inter if set
    except Exception as e:
        raise BadInput(f"unreadable NIfTI data: {e or type(e).__name__}", path) from None
    return data, affine


def read_nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode a ``.nii`` / ``.nii.gz`` file (local or URI) in memory.

    Args:
        path: local path or URI.

    Returns:
        ``(data, affine)``: the voxel array as stored (no reorientation), float32, and the 4x4 float64
        voxel-to-world (RAS mm) affine.

    Raises:
        BadInput: missing file, truncated or garbage gzip, not a NIfTI file, unreadable data.
    """
    data, affine = _nifti_array(path)
    return data.astype(np.float32, copy=False), affine


def _squeeze_trailing(data: np.ndarray, ndim: int) -> np.ndarray:
    while data.ndim > ndim and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def read_volume(paths: list[str] | str) -> tuple[np.ndarray, np.ndarray]:
    """Read a (multi-channel) volume.

    Args:
        paths: one 3D file (C=1), one 4D file with channels on the last axis (MSD BraTS), or several
            3D files, one per modality, stacked as channels.

    Returns:
        ``(image, affine)``: image ``[C, X, Y, Z]`` float32 and the affine of the (first) file.

    Raises:
        BadInput: unreadable file, wrong dimensionality, or channel files whose shapes/affines differ.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise BadInput("no image path given")
    chans, affine = [], None
    for p in paths:
        data, aff = read_nifti(p)
        data = _squeeze_trailing(data, 4 if len(paths) == 1 else 3)
        if len(paths) == 1 and data.ndim == 4:
            chans.extend(np.moveaxis(data, -1, 0))  # [X, Y, Z, C] -> C x [X, Y, Z]
        elif data.ndim == 3:
            chans.append(data)
        else:
            want = "3D or 4D" if len(paths) == 1 else "3D (one file per channel)"
            raise BadInput(f"expected a {want} volume, got shape {tuple(data.shape)}", p)
        if affine is None:
            affine = aff
        elif not np.allclose(aff, affine, atol=1e-3):
            raise BadInput(f"channel affine differs from the first channel's ({paths[0]})", p)
        if chans[-1].shape != chans[0].shape:
            raise BadInput(f"channel shape {chans[-1].shape} != first channel shape {chans[0].shape}", p)
    return np.stack(chans).astype(np.float32, copy=False), affine


def read_label(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a segmentation label map.

    Returns:
        ``(label, affine)``: label ``[X, Y, Z]`` uint8 (int16 if values fall outside 0..255).

    Raises:
        BadInput: unreadable file, not 3D, NaN or non-integer values.
    """
    data, affine = _nifti_array(path)
    data = _squeeze_trailing(data, 3)
    if data.ndim != 3:
        raise BadInput(f"expected a 3D label map, got shape {tuple(data.shape)}", path)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise BadInput(f"label has {int((~np.isfinite(data)).sum())} NaN/Inf voxels", path)
        rounded = np.rint(data)
        if np.abs(data - rounded).max(initial=0) > 1e-3:
            raise BadInput("label has non-integer values", path)
        data = rounded
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    dtype = np.uint8 if lo >= 0 and hi <= 255 else np.int16
    if dtype is np.int16 and (lo < -32768 or hi > 32767):
        raise BadInput(f"label values {lo}..{hi} do not fit int16", path)
    return data.astype(dtype), affine


def read_image_2d(path: str) -> np.ndarray:
    """Read a PNG/JPEG (or any Pillow format) as grayscale.

    Returns:
        ``[1, H, W]`` float32 in the file's value range (0..255 for 8-bit, 0..65535 for 16-bit);
        RGB/RGBA/palette images are converted to luminance.

    Raises:
        BadInput: missing file, not an image, unreadable pixel data.
    """
    from PIL import Image, UnidentifiedImageError

    raw = read_bytes(path)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            if im.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                im = im.convert("L")
            arr = np.asarray(im, dtype=np.float32)
    except UnidentifiedImageError:
        raise BadInput("not an image file", path) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BadInput(f"unreadable image data: {e}", path) from None
    if arr.ndim != 2:
        raise BadInput(f"expected a 2D grayscale image, got shape {arr.shape}", path)
    return arr[None]
