"""The volume cache: one uncompressed Arrow IPC file per preprocessed case, plus ``manifest.json``.

``<out>/<split>/<case file>.arrow`` holds one row: ``image`` ``[C, *spatial]``, ``label``, ``target``, ``affine``,
``spacing`` as fixed-shape tensors of the case's own shape and dtype, ``case_id`` and ``split``. Local files are
memory-mapped and read without a copy (the arrays point into the page cache), so a worker reads a volume at
memory speed (``benchmarks/data_pipeline.py``); ``s3://`` / ``gs://`` caches (``pyarrow.fs``) are read whole.
One file per case makes writing resumable: a case is written to a temporary name and renamed when complete, and
a re-run of ``prepare`` skips the cases whose file is there. ``manifest.json``, written last, lists each split's
files in the listing's order; training reads that list (:class:`CachedVolumes`), never the folder.

Caches of format ``rayssl-volumes/1`` (zstd Parquet shards, decoded at about 0.1 GB/s a core) are refused with
the command that rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from rayssl.data.kept import worker_share
from rayssl.storage import is_uri, join, open_uri

MANIFEST = "manifest.json"
VOLUME_FORMAT = "rayssl-volumes/2"
QUARANTINE = "quarantine.json"
SUFFIX = ".arrow"


def case_file(case_id: str) -> str:
    """The file name of a case: its id made safe for any file system, and a hash of the id (ids differing only in
    characters made safe stay apart)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id).strip("._")[:80] or "case"
    return f"{safe}-{hashlib.sha1(case_id.encode()).hexdigest()[:10]}{SUFFIX}"


def _column(value) -> pa.Array:
    if isinstance(value, np.ndarray):  # one row of the value's shape; C order, no copy
        return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(value).reshape((1, *value.shape)))
    return pa.array([value])


def write_case(out: str, split: str, row: dict) -> str:
    """Write one preprocessed case to ``<out>/<split>/``, complete or not at all; returns its file name.

    Args:
        out: the cache root, local or ``s3://`` / ``gs://``.
        split: sub-folder name (``train``, ``val``, ``test``).
        row: ``{"case_id", "image", ...}``; arrays are stored with their shape and dtype, ``None`` values left out.
    """
    table = pa.table({k: _column(v) for k, v in row.items() if v is not None})
    fs, root = open_uri(out)
    folder = posixpath.join(root, split)
    fs.create_dir(folder, recursive=True)
    name = case_file(row["case_id"])
    # an object store publishes an object when its upload completes; a local file is renamed when complete
    path = posixpath.join(folder, name if is_uri(out) else f".{name}.{uuid.uuid4().hex}.tmp")
    with fs.open_output_stream(path) as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    if not is_uri(out):
        os.replace(path, posixpath.join(folder, name))
    return name


def read_case(path: str, columns: tuple[str, ...] | None = None) -> dict:
    """One cached case as a row dict (arrays read-only; local files memory-mapped, no copy).

    Args:
        path: the case's file, local or a URI.
        columns: the columns to read (``None``: all).
    """
    if is_uri(path):
        fs, p = open_uri(path)
        with fs.open_input_file(p) as f:
            buffer = f.read_buffer()
    else:
        buffer = pa.memory_map(path)
    table = pa.ipc.open_file(buffer).read_all()
    row = {}
    for name in columns or table.column_names:
        column = table.column(name).chunk(0)
        row[name] = column.to_numpy_ndarray()[0] if isinstance(column.type, pa.FixedShapeTensorType) else column[0].as_py()
    return row


def cached_files(out: str, split: str) -> set[str]:
    """The complete case files in ``<out>/<split>`` (temporary files of an interrupted write left out)."""
    fs, root = open_uri(out)
    infos = fs.get_file_info(pafs.FileSelector(posixpath.join(root, split), allow_not_found=True))
    return {i.base_name for i in infos if i.base_name.endswith(SUFFIX) and not i.base_name.startswith(".")}


def delete_split(out: str, split: str) -> None:
    """Remove ``<out>/<split>`` if present."""
    fs, root = open_uri(out)
    path = posixpath.join(root, split)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def write_json(out: str, name: str, obj) -> str:
    """Write ``obj`` as indented JSON to ``<out>/<name>``; returns that path."""
    fs, root = open_uri(out)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(posixpath.join(root, name)) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=False, default=str).encode())
    return join(out, name)


def read_json(path: str) -> dict | list | None:
    """The JSON file at ``path`` (local or URI), ``None`` when there is none.

    Raises:
        ValueError: the file is not valid JSON.
    """
    fs, p = open_uri(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        try:
            return json.loads(f.readall())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path!r} is not valid JSON: {e}") from None


def rebuild_command(path: str, manifest: dict) -> str:
    """The command that prepares the cache at ``path`` again from the source its manifest names."""
    data = manifest.get("data") or {}
    source = data.get("source", manifest.get("source", "SPEC"))
    spec = json.dumps(source).replace(" ", "") if isinstance(source, list) else source
    extra = "".join(f" data.{k}={json.dumps(data[k]).replace(' ', '')}" for k in ("recipe", "spacing")
                    if data.get(k) is not None)
    return f"python jobs/prepare_data.py --source '{spec}' --out {path}{extra}"


def read_manifest(path: str) -> dict:
    """The ``manifest.json`` of a volume cache.

    Args:
        path: the cache root (or the manifest file itself).

    Raises:
        ValueError: no manifest there (not a finished volume cache), not valid JSON, or a cache of another format
            (the message names the command that rebuilds it).
    """
    root = path[: -len(MANIFEST)].rstrip("/") if path.endswith(MANIFEST) else path
    manifest = read_json(join(root, MANIFEST))
    if manifest is None:
        raise ValueError(f"{path!r} is not a volume cache: {MANIFEST} not found (run jobs/prepare_data.py first)")
    if manifest.get("format") != VOLUME_FORMAT:
        raise ValueError(f"cache {root!r} has format {manifest.get('format')!r}, not {VOLUME_FORMAT!r} (one memory-"
                         f"mapped Arrow file per case); rebuild it with: {rebuild_command(root, manifest)}")
    return manifest


@dataclass(frozen=True)
class CachedVolumes:
    """A cache split's volumes, read by the training workers: every epoch each worker reads its share of the case
    files (local files memory-mapped), one volume at a time, so memory does not grow with the number of cases."""

    root: str
    files: tuple[str, ...]
    columns: tuple[str, ...] | None = None
    items: tuple | None = None
    """``(index into files, repeat)`` per volume an epoch streams (a weighted pool); ``None``: each file once."""

    def cases(self) -> int:
        """The volumes an epoch streams."""
        return len(self.items) if self.items is not None else len(self.files)

    def epoch_rows(self, rank: int, world: int) -> Callable[[], Iterator[dict]]:
        """Worker ``rank`` of ``world``'s stream of volumes, one call per epoch (split as
        :meth:`rayssl.data.kept.KeptVolumes.epoch_rows`)."""
        items = self.items if self.items is not None else [(i, 0) for i in range(len(self.files))]
        share = worker_share(list(items), rank, world)

        def rows() -> Iterator[dict]:
            for i, repeat in share:
                row = read_case(join(self.root, self.files[i]), self.columns)
                yield {**row, "repeat": repeat} if repeat else row

        return rows


def read_volumes(path: str, split: str = "train", manifest: dict | None = None,
                 columns: list[str] | None = None) -> CachedVolumes:
    """The volumes of one split of a cache written by ``prepare``.

    Args:
        path: the cache root, local or ``s3://`` / ``gs://``.
        split: which split.
        manifest: the cache's manifest when the caller read it already (a run's plan); else read here.
        columns: the columns to read (``None``: all).

    Raises:
        ValueError: not a cache, the split was not written or holds no case, or its cases lack one of ``columns``.
    """
    manifest = manifest if manifest is not None else read_manifest(path)
    available = sorted(manifest.get("splits", {}))
    if split not in available:
        raise ValueError(f"cache {path!r} has no split {split!r}; available: {', '.join(available) or 'none'}")
    entry = manifest["splits"][split]
    if not entry.get("files"):
        raise ValueError(f"cache {path!r}: split {split!r} has no cases (every case was quarantined?)")
    items = entry.get("items")
    volumes = CachedVolumes(join(path, split), tuple(entry["files"]), tuple(columns) if columns else None,
                            tuple(map(tuple, items)) if items is not None else None)
    if columns:  # checked on the first case here, not on a worker mid-epoch
        first = join(volumes.root, volumes.files[0])
        missing = sorted(set(columns) - set(read_case(first)))
        if missing:
            raise ValueError(f"cache {path!r}: its {split!r} cases have no {', '.join(missing)} ({first}); prepare a "
                             "cache of labelled cases for this job")
    return volumes
