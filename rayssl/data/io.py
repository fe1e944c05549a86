"""Reading NIfTI volumes and 2D images from local paths or ``s3://`` / ``gs://`` / ``file://`` URIs.

Everything goes through ``pyarrow.fs`` (:mod:`rayssl.storage`) as bytes and is decoded in memory (nibabel for
NIfTI, Pillow for PNG/JPEG), so the same code reads a laptop folder and a bucket. Every failure is a
:class:`BadInput` whose message is a short reason; callers attach the path and quarantine the input.
"""

from __future__ import annotations

import io
import math
import os
import zlib

import nibabel as nib
import numpy as np
import pyarrow.fs as pafs

from rayssl.storage import open_uri

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


MAX_DECODED_BYTES = 2 * 2**30
"""The memory budget for one decoded input, checked before anything is read or allocated: the float32 array a
NIfTI header claims (its voxels x 4 bytes, whatever type it stores: that is what it becomes) and the bytes of any
file read whole. 2 GiB holds a 512 x 512 x 2048 CT; decoding holds that array and 1 MiB chunks, never the file's
bytes besides (see also :data:`MAX_IMAGE_PIXELS` and :data:`rayssl.data.preprocess.MAX_RESAMPLED_VOXELS`)."""

MAX_IMAGE_PIXELS = MAX_DECODED_BYTES // 64
"""The most pixels a 2D image (PNG, JPEG, ...) may have, read from its header before decoding: 32 Mi (e.g.
5792 x 5792; radiographs have up to about 4300 x 3500). Its preprocessing (histogram equalisation, anti-aliased
resize) holds about 80 bytes per pixel (1.3 GB for 4096 x 4096), so this keeps it near the budget."""

_CHUNK = 2**20
"""Bytes read, and decompressed, at a time."""


def _open(path: str):
    """``(input stream, size in bytes)`` of a regular file: a missing path, a folder, a FIFO or a device is refused
    without opening it."""
    fs, p = open_uri(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise BadInput("file not found", path)
    if info.type != pafs.FileType.File:
        raise BadInput("not a file", path)
    return fs.open_input_stream(p, compression=None), int(info.size)  # no decompression by extension


def read_bytes(path: str, limit: int = MAX_DECODED_BYTES) -> bytes:
    """All bytes of a file of at most ``limit`` bytes.

    Raises:
        BadInput: ``'file not found'``, ``'not a file'``, a file above ``limit`` or ``'cannot read file: ...'``.
    """
    try:
        f, size = _open(path)
        with f:
            if size > limit:
                raise BadInput(f"file is {size / 2**20:.0f} MiB, above the {limit / 2**20:.0f} MiB budget for "
                               "a file read whole", path)
            return f.read(size)
    except BadInput:
        raise
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read file: {e}", path) from None


class _Content:
    """A file's content, read in chunks only as far as asked (gunzipped on the fly when it is gzip; the members of
    a multi-member gzip file one after another, as nibabel reads them)."""

    def __init__(self, f, path: str, chunk: int = _CHUNK):
        self.f, self.path, self.chunk, self.back = f, path, chunk, b""  # back: content to give again first
        self.raw = f.read(chunk)  # file bytes not yet decompressed
        self.d = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.raw[:2] == _GZIP_MAGIC else None
        self.ended = False  # the gzip data ended where a member did (else it broke off)

    def _next(self, limit: int) -> bytes:
        """The next at most ``limit`` (> 0) bytes of content; ``b""`` at its end."""
        if self.back:
            out, self.back = self.back[:limit], self.back[limit:]
            return out
        if self.d is None:
            if not self.raw:
                return self.f.read(min(limit, self.chunk))
            out, self.raw = self.raw[:limit], self.raw[limit:]
            return out
        while not self.ended:
            if self.d.eof:  # a member ended: another may follow
                self.raw = self.d.unused_data + self.raw
                if len(self.raw) < 2:
                    self.raw += self.f.read(self.chunk)
                if self.raw[:2] != _GZIP_MAGIC:
                    self.ended = True
                    break
                self.d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if not self.raw:
                self.raw = self.f.read(self.chunk)
                if not self.raw:
                    break
            try:
                out = self.d.decompress(self.raw, limit)
            except zlib.error:
                raise BadInput("truncated or corrupt gzip data", self.path) from None
            self.raw = self.d.unconsumed_tail
            if out:
                return out
        return b""

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` as far as the content goes; the bytes filled."""
        n = 0
        while n < len(view) and (part := self._next(len(view) - n)):
            view[n:n + len(part)] = part
            n += len(part)
        return n

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        return bytes(buf[: self.readinto(memoryview(buf))])


def _read_head(content: _Content) -> bytes:
    """The first 540 bytes of a file's content, enough for either NIfTI header."""
    head = content.read(540)
    if len(head) < 348 and content.d is not None and not content.ended:
        raise BadInput(f"truncated or corrupt gzip data: the stream breaks off after {len(head)} bytes", content.path)
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
                if offset < size + 4:  # nibabel reads vox_offset 0 from byte 0: the header as voxels
                    raise BadInput(f"vox_offset {offset} puts the voxel data inside the {size}-byte header (a .nii "
                                   f"file has it at byte {size + 4} or later)", path)
                return klass, header, offset + math.prod(int(d) for d in shape) * dtype.itemsize
    raise BadInput("not a NIfTI file", path)


def read_nifti_header(path: str):
    """The NIfTI header of a file (its first bytes only), e.g. to write an output like it."""
    try:
        f, _ = _open(path)
        with f:
            return _nifti_layout(_read_head(_Content(f, path, chunk=65536)), path)[1]
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read file: {e}", path) from None


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


def _affine(header, ndim: int, path: str) -> np.ndarray:
    """The voxel-to-world affine nibabel gives (sform, else qform, else pixdim), once the voxel sizes that make it
    are checked: nibabel would silently turn a zero pixdim into 1 mm."""
    if int(header["sform_code"]) == 0:  # qform or pixdim alone set the voxel sizes
        zooms = tuple(float(v) for v in header["pixdim"][1:1 + min(3, ndim)])
        if 0.0 in zooms:
            raise BadInput(f"pixdim gives a zero voxel size {zooms} and no sform sets the grid", path)
    try:
        header.check_fix()  # what nibabel fixes or refuses when it loads a header
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception as e:  # nibabel raises many types for damaged headers
        raise BadInput(f"unreadable NIfTI header: {e}", path) from None
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise BadInput(f"the affine is not an invertible voxel-to-world map (all zero, collapsed or non-finite "
                       f"axes): {np.round(affine[:3, :3], 6).tolist()}", path)
    return affine


def _truncated(content: _Content, header, needed: int, holds: int) -> BadInput:
    why = "" if content.d is None else " (the gzip stream ends)" if content.ended else \
        " (the gzip data is truncated or corrupt)"
    return BadInput(f"truncated: header claims {_describe(header)} ({needed} bytes with the header) but the file "
                    f"holds {holds} bytes{why}", content.path)


def _read_voxels(content: _Content, header, needed: int, path: str, as_float: bool) -> np.ndarray:
    """The voxels after the header as ``[C, X, Y, Z]`` (C-contiguous; the axes past the third flattened into C in
    the file's order), float32 with the header's scaling applied (or the stored integer type when ``as_float`` is
    false and nothing is scaled), converted chunk by chunk into that one array."""
    shape, dtype = tuple(int(d) for d in header.get_data_shape()), header.get_data_dtype()
    try:
        slope, inter = header.get_slope_inter()
    except Exception as e:
        raise BadInput(f"unreadable NIfTI header: {e}", path) from None
    scaled = slope is not None and (slope, inter) != (1.0, 0.0)
    out_dtype = np.float32 if as_float or scaled or dtype.kind not in "iu" else dtype.newbyteorder("=")
    x, y, z, *rest = shape + (1,) * (3 - len(shape))
    out = np.empty((math.prod(rest), x, y, z), out_dtype)  # pages are only committed as they are filled
    rows = max(1, _CHUNK // (x * dtype.itemsize))  # rows of x voxels per read: whole z-slices when they fit
    ry, kz = (y, min(z, rows // y)) if rows >= y else (rows, 1)
    buf = memoryview(bytearray(ry * kz * x * dtype.itemsize))
    done = needed - math.prod(shape) * dtype.itemsize  # the data offset
    for c in range(out.shape[0]):
        for z0 in range(0, z, kz):
            for y0 in range(0, y, ry):
                k, r = min(kz, z - z0), min(ry, y - y0)
                view = buf[: k * r * x * dtype.itemsize]
                got = content.readinto(view)
                done += got
                if got < len(view):
                    raise _truncated(content, header, needed, done)
                slab = np.frombuffer(view, dtype).reshape(k, r, x)  # the file's order: x fastest
                out[c, :, y0:y0 + r, z0:z0 + k] = (slab * slope + inter if scaled else slab).transpose(2, 1, 0)
    return out


def _nifti_voxels(path: str, as_float: bool = True) -> tuple[np.ndarray, tuple[int, ...], np.ndarray]:
    """``(voxels [C, X, Y, Z], the file's shape, affine)`` of a ``.nii`` / ``.nii.gz`` file. The header is checked
    first: its claim within :data:`MAX_DECODED_BYTES` (and, uncompressed, within the file), the voxel type, the
    affine; then only the bytes it describes are read, in chunks (see :func:`_read_voxels`)."""
    try:
        f, size = _open(path)
        with f:
            content = _Content(f, path)
            head = _read_head(content)
            _, header, needed = _nifti_layout(head, path)
            shape, dtype = tuple(int(d) for d in header.get_data_shape()), header.get_data_dtype()
            offset = needed - math.prod(shape) * dtype.itemsize
            if content.d is None and size < needed:  # an uncompressed file's size tells
                raise _truncated(content, header, needed, size)
            if offset + 4 * math.prod(shape) > MAX_DECODED_BYTES:
                raise BadInput(f"header claims {_describe(header)} ({4 * math.prod(shape) / 2**30:.1f} GiB as "
                               f"float32), above the {MAX_DECODED_BYTES / 2**30:.0f} GiB budget for a decoded "
                               "volume (MAX_DECODED_BYTES)", path)
            if 0 in shape:
                raise BadInput(f"empty image, shape {shape}", path)
            if dtype.kind == "c":
                raise BadInput(f"complex voxels ({dtype}) are not supported: store the magnitude or one part", path)
            if dtype.fields is not None:
                raise BadInput(f"RGB / structured voxels ({', '.join(dtype.names)}) are not supported: store one "
                               "grayscale value per voxel", path)
            affine = _affine(header, len(shape), path)
            if offset <= len(head):  # the voxels start within the bytes read for the header
                content.back = head[offset:]
            else:  # skip the extensions
                skip, left = memoryview(bytearray(min(_CHUNK, offset - len(head)))), offset - len(head)
                while left and (got := content.readinto(skip[: min(len(skip), left)])):
                    left -= got
                if left:
                    raise _truncated(content, header, needed, offset - left)
            return _read_voxels(content, header, needed, path, as_float), shape, affine
    except OSError as e:
        raise BadInput(f"cannot read file: {e}", path) from None


def _file_shaped(vox: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``[C, X, Y, Z]`` voxels (see :func:`_read_voxels`) as a view of the file's shape."""
    if len(shape) <= 3:
        return vox.reshape(shape)
    n = len(shape) - 3
    return vox.reshape(*shape[:2:-1], *vox.shape[1:]).transpose(*range(n, n + 3), *range(n - 1, -1, -1))


def read_nifti(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode a ``.nii`` / ``.nii.gz`` file (local or URI) in memory.

    Args:
        path: local path or URI.

    Returns:
        ``(data, affine)``: the voxel array in the file's shape (no reorientation), float32, and the 4x4 float64
        voxel-to-world (RAS mm) affine.

    Raises:
        BadInput: missing file, truncated or garbage gzip, not a NIfTI file, a claim above
            :data:`MAX_DECODED_BYTES`, unreadable data.
    """
    vox, shape, affine = _nifti_voxels(path)
    return _file_shaped(vox, shape), affine


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
        ``(image, affine)``: image ``[C, X, Y, Z]`` float32 (C-contiguous) and the affine of the (first) file.

    Raises:
        BadInput: unreadable file, wrong dimensionality, channel files whose shapes/affines differ, or more than
            :data:`MAX_DECODED_BYTES` in all.
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise BadInput("no image path given")
    out, affine = None, None
    for i, p in enumerate(paths):
        vox, shape, aff = _nifti_voxels(p)
        data = _squeeze_trailing(_file_shaped(vox, shape), 4 if len(paths) == 1 else 3)
        if data.ndim not in ((3, 4) if len(paths) == 1 else (3,)):
            want = "3D or 4D" if len(paths) == 1 else "3D (one file per channel)"
            raise BadInput(f"expected a {want} volume, got shape {tuple(data.shape)}", p)
        if len(paths) == 1:
            return vox, aff  # [C, X, Y, Z]: a 4D file's last axis is C
        if affine is None:
            affine = aff
            if len(paths) * vox.nbytes > MAX_DECODED_BYTES:
                raise BadInput(f"{len(paths)} channel files of {' x '.join(map(str, data.shape))} voxels make "
                               f"{len(paths) * vox.nbytes / 2**30:.1f} GiB as float32, above the "
                               f"{MAX_DECODED_BYTES / 2**30:.0f} GiB budget for a decoded volume", p)
            out = np.empty((len(paths), *data.shape), np.float32)
        elif not np.allclose(aff, affine, atol=1e-3):
            raise BadInput(f"channel affine differs from the first channel's ({paths[0]})", p)
        if data.shape != out.shape[1:]:
            raise BadInput(f"channel shape {data.shape} != first channel shape {out.shape[1:]}", p)
        out[i] = data
    return out, affine


def read_label(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a segmentation label map.

    Returns:
        ``(label, affine)``: label ``[X, Y, Z]`` uint8 (int16 if values fall outside 0..255).

    Raises:
        BadInput: unreadable file, not 3D, NaN or non-integer values.
    """
    vox, shape, affine = _nifti_voxels(path, as_float=False)
    data = _squeeze_trailing(_file_shaped(vox, shape), 3)
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
    return data.astype(dtype, copy=False), affine


def read_image_2d(path: str) -> np.ndarray:
    """Read a PNG/JPEG (or any Pillow format) as grayscale.

    Returns:
        ``[1, H, W]`` float32 in the file's value range (0..255 for 8-bit, 0..65535 for 16-bit);
        RGB/RGBA/palette images are converted to luminance.

    Raises:
        BadInput: missing file, not an image, more than :data:`MAX_IMAGE_PIXELS` pixels (read from the header,
            before decoding), unreadable pixel data.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    raw = read_bytes(path)
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the check below says more
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw))
        with im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise BadInput(f"image is {w} x {h} pixels, above the {MAX_IMAGE_PIXELS // 2**20} Mi pixels a 2D image "
                               f"may have (MAX_IMAGE_PIXELS); not decoded", path)
            im.load()
            if im.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                im = im.convert("L")
            arr = np.asarray(im, dtype=np.float32)
    except UnidentifiedImageError:
        raise BadInput("not an image file", path) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadInput(f"unreadable image data: {e}", path) from None
    if arr.ndim != 2:
        raise BadInput(f"expected a 2D grayscale image, got shape {arr.shape}", path)
    return arr[None]
