"""Where files live: local paths and ``s3://`` / ``gs://`` / ``file://`` URIs, through ``pyarrow.fs``.

The bottom floor of rayssl's file handling: naming, joining, probing and listing paths the same way for a laptop
folder and a bucket. What a file holds (NIfTI, images, DICOM) and how much of it may be decoded is the business of
the readers above (:mod:`rayssl.data.io`, :mod:`rayssl.data.dicom`).
"""

from __future__ import annotations

import os
import posixpath
import stat

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """An absolute local path (``~`` expanded; Ray workers may run in another directory); URIs unchanged."""
    path = str(path).strip()
    return path if is_uri(path) or not path else os.path.abspath(os.path.expanduser(path))


def join(root: str, *parts: str) -> str:
    """Join path parts for a local path or a URI (``os.path.join`` would break ``s3://``).

    The parts are names rayssl chose (a split, a file name): they are joined as given, without normalising. For
    a path read from a manifest, relative to the manifest's folder, see :func:`join_relative`.
    """
    return posixpath.join(str(root), *parts) if is_uri(root) else os.path.join(root, *parts)


def join_relative(base: str, rel: str) -> str:
    """``rel``, a path as a manifest or a listing gives it, relative to folder ``base``.

    Unlike :func:`join`: ``rel`` is stripped of surrounding spaces and of a leading ``./``; an absolute ``rel``
    or a URI is kept as it is (``join`` would append a URI to ``base``); a local result is normalised
    (``posixpath.normpath``: ``a/../b`` becomes ``b``), a URI result is not.
    """
    rel = rel.strip()
    if is_uri(rel) or posixpath.isabs(rel):
        return rel
    if rel.startswith("./"):
        rel = rel[2:]
    return posixpath.join(base, rel) if is_uri(base) else posixpath.normpath(posixpath.join(base, rel))


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


def special_kind(path: str, mode: int | None = None) -> str | None:
    """``"a FIFO"``, ``"a socket"``, ``"a character device"`` or ``"a block device"`` when the local ``path``
    (or the ``st_mode`` given) is one, without opening it (opening a FIFO blocks); ``None`` otherwise."""
    if mode is None:
        try:
            mode = os.stat(os.path.expanduser(path)).st_mode if not is_uri(path) else 0
        except OSError:
            return None
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), None)


def list_files(folder: str) -> list[str] | None:
    """Files directly in ``folder`` (full paths, sorted; names starting with ``.`` skipped, e.g. macOS
    ``._x.nii.gz`` files), or ``None`` if it is not a directory."""
    fs, p = open_uri(folder)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return None
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return [join_relative(folder, n) for n in names if not n.startswith(".")]


def list_dirs(folder: str) -> list[str]:
    """Folders directly in ``folder`` (full paths, in the file system's order); ``[]`` if it does not exist."""
    fs, p = open_uri(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False, allow_not_found=True))
    return [join_relative(folder, i.base_name) for i in infos if i.type == pafs.FileType.Directory]
