"""Parquet cache of preprocessed volumes: one folder of shards per split plus ``manifest.json``.

Each row is one case (``image`` ``[C, *spatial]``, ``label``, ``affine``, ...). Tensor columns are written
with Ray's Arrow tensor extension type (variable-shaped across cases), so they come back with the same
dtype and shape, bit-identically. Training cuts new crops from them every epoch. ``out`` may be a
local folder or an ``s3://`` / ``gs://`` URI (``pyarrow.fs``).
"""

from __future__ import annotations

import json
import posixpath

import pyarrow.fs as pafs
import ray.data

from rayssl.data.context import dataset_context
from rayssl.storage import join, open_uri

MANIFEST = "manifest.json"
VOLUME_FORMAT = "rayssl-volumes/1"
QUARANTINE = "quarantine.json"


def write_volumes(ds: ray.data.Dataset, out: str, split: str, rows_per_file: int = 4) -> str:
    """Stream a dataset of volumes into ``<out>/<split>/*.parquet`` (zstd), replacing that split.

    Args:
        ds: rows ``{"image": [C, *spatial], "label"?, "target"?, "case_id", "split", ...}``.
        out: the cache root, local or ``s3://`` / ``gs://``.
        split: sub-folder name (``train``, ``val``, ``test``).
        rows_per_file: upper bound of rows per Parquet file.

    Returns:
        The split folder written.
    """
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    fs, root = open_uri(out)
    path = posixpath.join(root, split)
    ds.write_parquet(
        path, filesystem=fs, max_rows_per_file=rows_per_file, compression="zstd", mode="overwrite"
    )
    return join(out, split)


def delete_split(out: str, split: str) -> None:
    """Remove ``<out>/<split>`` if present (used when a strict run fails after writing)."""
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


def read_manifest(path: str) -> dict:
    """The ``manifest.json`` of a volume cache.

    Args:
        path: the cache root (or the manifest file itself).

    Raises:
        ValueError: no manifest there (not a finished volume cache) or not valid JSON.
    """
    fs, p = open_uri(path)
    if not p.endswith(".json"):
        p = posixpath.join(p, MANIFEST)
    if fs.get_file_info(p).type != pafs.FileType.File:
        raise ValueError(f"{path!r} is not a volume cache: {MANIFEST} not found (run jobs/prepare_data.py first)")
    with fs.open_input_stream(p) as f:
        try:
            return json.loads(f.readall())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path!r}: {MANIFEST} is not valid JSON: {e}") from None


def read_volumes(path: str, split: str = "train", manifest: dict | None = None) -> ray.data.Dataset:
    """Stream the volumes of one split from a cache written by ``prepare``.

    Args:
        path: the cache root, local or ``s3://`` / ``gs://``.
        split: which split's shards to read.
        manifest: the cache's manifest when the caller read it already (a run's plan); else read here.

    Raises:
        ValueError: not a cache, or the split was not written.
    """
    manifest = manifest if manifest is not None else read_manifest(path)
    available = sorted(manifest.get("splits", {}))
    if split not in available:
        raise ValueError(f"cache {path!r} has no split {split!r}; available: {', '.join(available) or 'none'}")
    if not manifest["splits"][split].get("cases"):
        raise ValueError(f"cache {path!r}: split {split!r} has no cases (every case was quarantined?)")
    fs, root = open_uri(path)
    folder = posixpath.join(root, split)
    files = [f for f in fs.get_file_info(pafs.FileSelector(folder)) if f.path.endswith(".parquet")]
    # one read task and block per shard: splitting small shards further only adds scheduling overhead
    with dataset_context(parquet_v1=True):
        return ray.data.read_parquet(folder, filesystem=fs, override_num_blocks=max(1, len(files)))
