"""Ray Data pipeline: list cases -> read + validate + preprocess -> whole volumes -> (optional) Parquet cache.

``ray.data.from_items`` holds the cheap case listing (one block per case or few cases, so decoding
runs in parallel); a ``flat_map`` reads and preprocesses one case (``load_case``). This is the
expensive, deterministic part of the data flow and runs once per case: into Ray's object store for a
run (``train_volumes``: one Ray task per case, read by the workers through :mod:`rayssl.data.kept`) or
into a Parquet cache (``prepare``). The cheap, random part, new crops and
flips every epoch, runs on the training workers (:mod:`rayssl.data.crops`). Execution streams: memory
is bounded by the blocks in flight, never by the dataset size.

An input that cannot be used (unreadable, truncated, NaN voxels, shape mismatch, listed but missing)
never stops the run: it is recorded in a :class:`QuarantineLog` actor with its path and reason and
skipped. ``DataConfig.strict`` turns that into an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray
import ray.data

import rayssl
from rayssl.config import DataConfig, PrepareConfig, dump_config
from rayssl.data.cache import QUARANTINE, VOLUME_FORMAT, delete_split, read_volumes, write_json, write_volumes
from rayssl.data.context import dataset_context
from rayssl.data.kept import KeptVolumes
from rayssl.data.io import BadInput
from rayssl.data.preprocess import load_case
from rayssl.config.recipes import RECIPES
from rayssl.data.pool_shares import check_streamable, epoch_items
from rayssl.data.sources import POOL, Case, QuarantineError, Source, listing_message
from rayssl.storage import absolute, is_uri, join, open_uri

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CASES_PER_BLOCK = 4
"""Cases per block of the listing (one Ray task each) once there are more blocks than 2 per CPU."""
MAX_BLOCKS = 1024


@ray.remote(num_cpus=0)
class QuarantineLog:
    """Side channel for unusable inputs, written from inside streaming Ray Data tasks.

    ``add`` is idempotent per ``(case_id, path)``, so a retried task does not record twice.
    """

    def __init__(self):
        self._entries: dict[tuple[str, str], dict] = {}

    def add(self, path: str, reason: str, case_id: str = "", split: str = "") -> int:
        self._entries.setdefault((case_id, path), {"case_id": case_id, "split": split, "path": path, "reason": reason})
        return len(self._entries)

    def entries(self) -> list[dict]:
        return list(self._entries.values())


# --------------------------------------------------------------------------- listing


def _splits(split: str | list[str]) -> list[str]:
    splits = [split] if isinstance(split, str) else list(split)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"split must be one or more of {SPLITS}, got {split!r}")
    return splits


def resolve_recipe(data: DataConfig, source: Source) -> str:
    """The run's recipe: ``data.recipe``, else the source's own; a pool's is its first source's (each of its cases
    carries its own, :attr:`Case.recipe`)."""
    name = source.recipe if source.kind == POOL else data.recipe or source.recipe
    recipe = RECIPES[name]
    if data.spatial_dims != source.spatial_dims:
        raise ValueError(
            f"roi {tuple(data.roi)} has {data.spatial_dims} axes but source {data.source!r} holds "
            f"{source.spatial_dims}D images; set data.roi to {source.spatial_dims} ints"
        )
    if recipe.spatial_dims not in (0, source.spatial_dims):  # 0: any dimensionality
        raise ValueError(f"recipe {name!r} is for {recipe.spatial_dims}D images, source {data.source!r} is {source.spatial_dims}D")
    return name


def image_size_2d(data: DataConfig) -> int:
    # 2D images are resized to a square of at least 224 (the papers' size); a smaller roi crops it
    return max(224, *data.roi) if data.spatial_dims == 2 else 224


def _items(cases: list[Case]) -> list[dict]:
    items = []
    for c in cases:
        c = dataclasses.replace(c, image=[absolute(p) for p in c.image], label=c.label and absolute(c.label))
        items.append({"case_id": c.case_id, "split": c.split, "case": json.dumps(dataclasses.asdict(c))})
    return items


def _listing(cases: list[Case]) -> ray.data.Dataset:
    # a few cases per block (one read task each) keeps per-task overhead low; at least two blocks
    # per CPU keep every core busy
    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else (os.cpu_count() or 1)
    blocks = max(2 * cpus, math.ceil(len(cases) / CASES_PER_BLOCK))
    with dataset_context():
        return ray.data.from_items(_items(cases), override_num_blocks=max(1, min(len(cases), blocks, MAX_BLOCKS)))


def _select(source: Source, split: str | list[str], data: DataConfig) -> list[Case]:
    splits = _splits(split)
    cases = [c for c in source.cases if c.split in splits]
    if not cases:
        raise ValueError(f"source {data.source!r} has no usable cases in split(s) {', '.join(splits)}")
    return cases


def _record_missing(source: Source, data: DataConfig, quarantine) -> None:
    if quarantine is not None and source.missing:
        ray.get([quarantine.add.remote(p, r) for p, r in source.missing])
    for path, reason in source.missing:
        logger.warning("quarantined %s: %s", path, reason)


def label_values(source: Source, keep_label: bool) -> list[int] | None:
    """The values a kept label map may hold: the source's declared labels (``None``: none declared, any)."""
    return sorted(source.labels) if keep_label and source.labels else None


# --------------------------------------------------------------------------- per-case work (Ray tasks)


def _load(row: dict, recipe: str, spacing, size_2d: int, channels: int, keep_label: bool, quarantine,
          strict: bool, label_values: list[int] | None = None) -> dict | None:
    """``load_case`` on one listed case (with its own recipe when it has one, else ``recipe``); an unusable case is
    recorded and gives ``None``."""
    case = Case(**json.loads(row["case"]))
    try:
        volume = load_case(case, recipe, spacing, size_2d, channels, label_values)
    except Exception as e:  # noqa: BLE001 - any read/decode failure quarantines the case, never the run
        path = getattr(e, "path", None) or ",".join(case.image)
        reason = str(e) if isinstance(e, BadInput) else f"{type(e).__name__}: {e}"
        if strict:
            raise BadInput(f"case {case.case_id!r}, {path}: {reason}", path) from e
        if quarantine is not None:
            ray.get(quarantine.add.remote(path, reason, case.case_id, case.split))
        logger.warning("quarantined %s: %s", path, reason)
        return None
    if not keep_label:
        volume["label"] = None
    return volume


def _volume_row(row: dict, keep_label: bool, recipe: str, spacing, size_2d: int, channels: int, quarantine,
                strict: bool, dtype: str = "float32", label_values: list[int] | None = None) -> list[dict]:
    volume = _load(row, recipe, spacing, size_2d, channels, keep_label, quarantine, strict, label_values)
    if volume is None:
        return []
    out = {"case_id": volume["case_id"], "split": volume["split"], "image": volume["image"].astype(dtype, copy=False),
           "spacing": np.asarray(volume["spacing"], np.float64), "affine": np.asarray(volume["affine"], np.float64)}
    for key in ("label", "target"):
        if volume.get(key) is not None:
            out[key] = volume[key]
    return [out]


# --------------------------------------------------------------------------- datasets


def case_dataset(
    data: DataConfig,
    source: Source,
    recipe: str,
    split: str | list[str] = "train",
    quarantine=None,
    dtype: str = "float32",
) -> ray.data.Dataset:
    """Preprocessed whole volumes, one row per usable case (lazy; nothing runs until consumed).

    Args:
        data: spacing, 2D size, strict mode.
        source: the resolved source (``resolve_source(data)``).
        recipe: the resolved recipe (``resolve_recipe(data, source)``).
        split: one split or a list of splits.
        quarantine: a :class:`QuarantineLog` handle that receives unusable inputs (else they are logged).
        dtype: of the ``image`` column.

    Returns:
        Rows ``{"image": [C, *spatial], "label": [*spatial] (when every selected case is labelled),
        "target": [K] (CXR), "case_id", "split", "spacing": [3], "affine": [4, 4]}``.

    Raises:
        ValueError: the split is empty.
    """
    cases = _select(source, split, data)
    _record_missing(source, data, quarantine)
    return _volume_stream(data, source, recipe, cases, quarantine, dtype)


def _volume_stream(data: DataConfig, source: Source, recipe: str, cases: list[Case], quarantine, dtype: str):
    keep_label = all(c.label is not None for c in cases)
    return _listing(cases).flat_map(
        _volume_row,
        fn_kwargs=dict(keep_label=keep_label, recipe=recipe, spacing=data.spacing, size_2d=image_size_2d(data),
                       channels=source.channels, quarantine=quarantine, strict=data.strict, dtype=dtype,
                       label_values=label_values(source, keep_label)),
    )


def cache_matches(manifest: dict, data: DataConfig, recipe: str) -> None:
    """Check that a volume cache was preprocessed as ``data`` asks (recipe, spacing, 2D size).

    Raises:
        ValueError: the cache is not a volume cache, or it was made with other preprocessing.
    """
    path = data.cache_dir
    if manifest.get("format") != VOLUME_FORMAT:
        raise ValueError(f"cache {path!r} has format {manifest.get('format')!r}, not {VOLUME_FORMAT!r} (a cache of "
                         "fixed patches from an earlier rayssl cannot serve training); re-run jobs/prepare_data.py")
    want = {"recipe": recipe, "spacing": recipe_spacing(data, recipe)}
    if manifest["spatial_dims"] == 2:
        want["size_2d"] = image_size_2d(data)
    wrong = [f"{k} {manifest.get(k)!r} (config: {v!r})" for k, v in want.items() if manifest.get(k) != v]
    if wrong:
        raise ValueError(f"cache {path!r} was preprocessed with {', '.join(wrong)}; re-run jobs/prepare_data.py "
                         "with this config or fix data.recipe / data.spacing")


def recipe_spacing(data: DataConfig, recipe: str) -> list[float] | None:
    spacing = data.spacing or RECIPES[recipe].spacing
    return [float(v) for v in spacing] if spacing else None


@ray.remote
def _keep_case(row: dict, after, columns: list[str], kwargs: dict) -> tuple[dict | None, int]:
    """One case's ``columns`` preprocessed into Ray's object store, and 1 (or ``None`` and 0 when it was
    unusable). ``after``, the count of the case ``at_once`` places earlier, is only waited for: it bounds
    how many cases preprocess at once."""
    rows = _volume_row(row, **kwargs)
    return ({k: rows[0][k] for k in columns} if rows else None), len(rows)


@dataclasses.dataclass(frozen=True)
class TrainVolumes:
    """A run's training volumes: ``kept`` in Ray's object store (read by the workers), or a ``dataset``
    Ray Data streams to them (from the source every epoch, or from the cache)."""

    dataset: ray.data.Dataset | None = None
    kept: KeptVolumes | None = None


def train_volumes(
    data: DataConfig, columns: list[str], source: Source | None, recipe: str, manifest: dict | None = None,
    split: str = "train", at_once: int = 0,
) -> TrainVolumes:
    """What Ray Train consumes: preprocessed whole volumes, from the cache or from the source.

    Training workers cut fresh crops from them every epoch (:mod:`rayssl.data.crops`). From a source,
    the volumes are preprocessed once and kept in Ray's object store (``data.keep_volumes``) or
    preprocessed again every epoch; a cache is streamed from disk every epoch.

    Kept volumes are preprocessed by Ray tasks, one per case, started here; the run can start at once (its
    workers import and build their engines meanwhile), and the workers read them from the object store. A pool
    with weights streams some of them more than once an epoch (:mod:`rayssl.data.pool_shares`); its weights need
    kept volumes.

    Args:
        data: the data config; with ``cache_dir`` the cache's recipe and spacing must match it and ``recipe``.
        columns: the columns to keep besides ``case_id`` (which seeds each case's crops).
        source: the resolved source (the run's plan; unused with ``cache_dir``).
        recipe: the resolved recipe (the run's plan).
        manifest: the cache's manifest, read by the run's plan (``data.cache_dir`` only).
        split: the split to read.
        at_once: kept volumes: how many cases preprocess at once, beside the training workers (the CPUs
            they leave free). ``0`` (the workers will hold every CPU) or ``data.strict``: every CPU
            preprocesses and this returns once every case is done.

    Raises:
        ValueError: the cache was preprocessed otherwise, or ``data.cache_dir`` is set and ``manifest`` is not; a
            pool with weights and ``data.keep_volumes=false``.
    """
    columns = ["case_id", *[c for c in columns if c != "case_id"]]
    if source is not None and not data.cache_dir:
        check_streamable(data, source)
    if data.cache_dir:
        if manifest is None:
            raise ValueError(f"data.cache_dir={data.cache_dir!r}: pass its manifest (read_manifest) to train_volumes")
        cache_matches(manifest, data, recipe)
        return TrainVolumes(dataset=read_volumes(data.cache_dir, split, manifest).select_columns(columns))
    if not data.keep_volumes:
        return TrainVolumes(dataset=case_dataset(data, source, recipe, split).select_columns(columns))
    cases = _select(source, split, data)
    _record_missing(source, data, None)
    keep_label = "label" in columns and all(c.label is not None for c in cases)
    kwargs = dict(keep_label=keep_label, recipe=recipe, spacing=data.spacing, size_2d=image_size_2d(data),
                  channels=source.channels, quarantine=None, strict=data.strict,
                  label_values=label_values(source, keep_label))
    window = at_once or max(1, int(ray.cluster_resources().get("CPU", 1)))
    volumes, usable = [], []
    for i, item in enumerate(_items(cases)):
        # "DEFAULT": outside a sweep trial's placement group, as Ray Data's own tasks
        volume, count = _keep_case.options(num_returns=2, scheduling_strategy="DEFAULT").remote(
            item, usable[i - window] if i >= window else None, columns, kwargs)
        volumes.append(volume)
        usable.append(count)
    kept = KeptVolumes(tuple(volumes), tuple(usable), epoch_items(source, cases, data.seed))
    if not at_once or data.strict:  # strict: a bad input stops the run before it starts
        kept.counts()
    return TrainVolumes(kept=kept)


# --------------------------------------------------------------------------- prepare


def default_out(data: DataConfig) -> str:
    """``runs/data/<source>-<recipe>`` under the current directory."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", f"{data.source}-{data.recipe or 'auto'}").strip("-")
    return os.path.abspath(os.path.join("runs", "data", name))


def _split_stats(out: str, split: str) -> dict:
    # counts from the Parquet files themselves (one small column), so the manifest matches the shards
    fs, root = open_uri(join(out, split))
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return {"cases": 0, "files": 0}
    dataset = pads.dataset(root, filesystem=fs, format="parquet")
    return {"cases": dataset.count_rows(), "files": len(dataset.files)}


def prepare(cfg: PrepareConfig, source: Source, recipe: str) -> str:
    """Read and preprocess ``cfg.data.splits`` once and write the volumes as Parquet shards, with
    ``manifest.json`` and ``quarantine.json``: the cache training crops from (``data.cache_dir``).

    Args:
        cfg: ``data`` (what to read and how to preprocess it), ``out`` (default :func:`default_out`),
            ``rows_per_file`` (volumes per file).
        source: the resolved source (``resolve_source(cfg.data)``, before starting Ray).
        recipe: the resolved recipe (``resolve_recipe(cfg.data, source)``).

    Returns:
        The output folder (or URI).

    Raises:
        ValueError: every case a split lists was unusable. A split that lists no case (a source of one
            case or series: its case is in "val") is written empty with a warning; the training jobs check
            the splits they need.
        QuarantineError: ``data.strict`` and some inputs were unusable (all are listed; the shards
            written are removed and no manifest is written).
    """
    data = cfg.data
    out = cfg.out or default_out(data)
    if not is_uri(out):
        out = os.path.abspath(out)
    log = QuarantineLog.remote()
    lax = data.model_copy(update={"strict": False})  # collect every bad input first, raise after
    _record_missing(source, lax, log)

    splits, listed = {}, 0
    for split in data.splits:
        cases = source.split(split)
        listed += len(cases)
        if cases:
            write_volumes(_volume_stream(lax, source, recipe, cases, log, data.patch_dtype), out, split, cfg.rows_per_file)
        else:  # caching needs no split: a source of one case has it in "val"
            delete_split(out, split)
            where = ", ".join(f"{s} {n}" for s, n in sorted(Counter(c.split for c in source.cases).items())) or "none"
            logger.warning("split %r of source %r lists no case (its %d case(s) by split: %s); written empty",
                           split, data.source, len(source.cases), where)
        splits[split] = {**_split_stats(out, split), "listed": len(cases)}
        logger.info("split %r: %d of %d cases preprocessed", split, splits[split]["cases"], len(cases))

    entries = sorted(ray.get(log.entries.remote()), key=lambda e: (e["path"], e["case_id"]))
    ray.kill(log)
    write_json(out, QUARANTINE, entries)
    total = listed + len(source.missing)
    logger.info("quarantined %d of %d inputs (see %s)", len(entries), total, QUARANTINE)
    if data.strict and entries:
        for split in data.splits:
            delete_split(out, split)
        raise QuarantineError(listing_message(f"source {data.source!r}", [(e["path"], e["reason"]) for e in entries]))
    empty = [s for s in data.splits if splits[s]["listed"] and splits[s]["cases"] == 0]
    if empty:
        raise ValueError(f"every case of split(s) {', '.join(empty)} was unusable (see {join(out, QUARANTINE)}); "
                         "no manifest was written")

    manifest = {
        "format": VOLUME_FORMAT,
        "rayssl_version": rayssl.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": data.source,
        "source_kind": source.kind,
        "source_root": source.root,
        "recipe": recipe,
        "recipe_steps": dataclasses.asdict(RECIPES[recipe]),
        "spacing": recipe_spacing(data, recipe),
        "spatial_dims": source.spatial_dims,
        "size_2d": image_size_2d(data) if source.spatial_dims == 2 else None,
        "dtype": data.patch_dtype,
        "channels": source.channels,
        "modality": {str(k): v for k, v in source.modality.items()},
        "labels": {str(k): v for k, v in source.labels.items()},
        "class_names": list(source.class_names),
        "splits": splits,
        "quarantined": entries,
        "data": dump_config(data),
        "rows_per_file": cfg.rows_per_file,
    }
    write_json(out, "manifest.json", manifest)
    return out
