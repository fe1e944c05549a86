"""Path safety: no listed file outside the dataset's folders is read (unless ``data.allow_outside_root``), and
no missing file, FIFO, device or socket is handed on to be opened."""

from __future__ import annotations

import os
import posixpath
from urllib.parse import unquote, urlsplit

from rayssl.data.io import BadInput, read_bytes
from rayssl.data.sources.base import Case
from rayssl.storage import exists, is_dir, is_uri, list_files, special_kind


def local_path(path: str) -> str | None:
    """The local file system path of a local path or a ``file://`` URI; ``None`` for other URIs."""
    if not is_uri(path):
        return path
    parts = urlsplit(path)
    return unquote(parts.path) if parts.scheme == "file" and not parts.netloc else None


def outside_root(path: str, roots: list[str]) -> bool:
    """Whether ``path`` lies outside every folder of ``roots``: ``..`` out of it, an absolute path or a URI
    elsewhere, or a symlink that leads out of it (local paths and ``file://`` URIs are compared resolved)."""
    for root in roots:
        local_root, local = local_path(root), local_path(path)
        if local_root is not None and local is not None:
            base, real = os.path.realpath(local_root), os.path.realpath(local)
            if os.path.commonpath([base, real]) == base:
                return False
            continue
        if not (is_uri(root) and is_uri(path)):
            continue
        r, p = urlsplit(root), urlsplit(path)
        base = posixpath.normpath("/" + r.path.strip("/"))
        inner = posixpath.normpath("/" + p.path.lstrip("/"))
        if (r.scheme, r.netloc) == (p.scheme, p.netloc) and (inner + "/").startswith(base.rstrip("/") + "/"):
            return False
    return True


def read_text(path: str, root: str | None = None) -> str:
    """A manifest's UTF-8 text; with ``root``, a manifest that leads out of it (a symlink) is refused unopened."""
    if root is not None and outside_root(path, [root]):
        real = os.path.realpath(local_path(path) or path)
        raise ValueError(f"{path}: a symlink that leads outside the dataset root {root} (to {real}); set "
                         "data.allow_outside_root=true to read it")
    try:
        return read_bytes(path).decode("utf-8-sig")
    except BadInput as e:
        raise ValueError(f"{path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (undecodable byte at offset {e.start})") from None


def keep_inside(cases: list[Case], roots: list[str], missing: list[tuple[str, str]]) -> list[Case]:
    """Move cases with a file outside ``roots`` to ``missing`` (reason ``outside the dataset root``), before
    anything reads or even lists it."""
    kept = []
    for c in cases:
        out = [p for p in [*c.image, *([c.label] if c.label else [])] if outside_root(p, roots)]
        if out:
            missing.extend((p, f"outside the dataset root ({', '.join(roots)}); set data.allow_outside_root=true "
                               "to read it") for p in out)
        else:
            kept.append(c)
    return kept


def keep_existing(cases: list[Case], missing: list[tuple[str, str]]) -> list[Case]:
    """Move cases whose image or label file does not exist, or is a FIFO, device or socket, to ``missing``.

    Each parent folder is listed once (one request per folder on object stores, not one per file).
    """
    listed: dict[str, set[str]] = {}

    def present(path: str) -> bool:
        folder = posixpath.dirname(path)
        if folder not in listed:
            files = list_files(folder) if is_dir(folder) else None
            listed[folder] = {posixpath.basename(f) for f in files or []}
        return posixpath.basename(path) in listed[folder] or (not listed[folder] and exists(path))

    kept = []
    for c in cases:
        absent = [p for p in [*c.image, *([c.label] if c.label else [])] if not present(p)]
        if absent:
            missing.extend((p, f"not a regular file ({kind}): never opened" if (kind := special_kind(p)) else "file not found")
                           for p in absent)
        else:
            kept.append(c)
    return kept
