"""The data pipeline: list cases -> read + validate + preprocess -> whole volumes, once per case.

Reading and preprocessing a case (``load_case``) is the expensive, deterministic part of the data flow and runs
once per case, in Ray tasks: into Ray's object store for a run (``train_volumes``: one task per case, read by the
workers through :mod:`rayssl.data.kept`), or into the volume cache (``prepare``: one task per case, each writing
its own file, :mod:`rayssl.data.cache`). A run whose volumes exceed the kept-volume budget prepares the cache and
streams from it. With ``data.keep_volumes=false`` a Ray Data ``flat_map`` over the case listing preprocesses every
epoch again (``case_dataset``). The cheap, random part, new crops and flips every epoch, runs on the training
workers (:mod:`rayssl.data.crops`).

An input that cannot be used (unreadable, truncated, NaN voxels, shape mismatch, listed but missing) never stops
the run: it is logged with its path and reason (``prepare`` records it in ``quarantine.json``, by source) and
skipped. ``DataConfig.strict`` turns that into an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import ray
import ray.data
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import rayssl
from rayssl.config import DataConfig, PrepareConfig, dump_config
from rayssl.config.recipes import RECIPES
from rayssl.data.cache import (MANIFEST, QUARANTINE, VOLUME_FORMAT, CachedVolumes, cached_files, case_file,
                               read_json, read_volumes, rebuild_command, write_case, write_json)
from rayssl.data.context import dataset_context
from rayssl.data.io import BadInput
from rayssl.data.kept import KeptVolumes
from rayssl.data.pool_shares import check_streamable, epoch_items
from rayssl.data.preprocess import load_case
from rayssl.data.sources import POOL, Case, QuarantineError, Source, listing_message
from rayssl.storage import absolute, is_uri, join

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CASES_PER_BLOCK = 4
"""Cases per block of the listing (one Ray task each) once there are more blocks than 2 per CPU."""
MAX_BLOCKS = 1024
PREPARATION = "preparation.json"
"""Written first into a cache folder: what makes its case files interchangeable (a re-run must match it)."""


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


def _missing_entries(source: Source) -> list[dict]:
    """The inputs the listing found missing, as quarantine entries (logged)."""
    for path, reason in source.missing:
        logger.warning("quarantined %s: %s", path, reason)
    return [{"case_id": "", "split": "", "path": p, "reason": r} for p, r in source.missing]


def label_values(source: Source, keep_label: bool) -> list[int] | None:
    """The values a kept label map may hold: the source's declared labels (``None``: none declared, any)."""
    return sorted(source.labels) if keep_label and source.labels else None


# --------------------------------------------------------------------------- per-case work (Ray tasks)


def _volume(row: dict, keep_label: bool, recipe: str, spacing, size_2d: int, channels: int, strict: bool,
            dtype: str = "float32", label_values: list[int] | None = None) -> tuple[dict | None, dict | None]:
    """``load_case`` on one listed case (with its own recipe when it has one, else ``recipe``): ``(row, None)``,
    or ``(None, quarantine entry)`` when the case is unusable (logged; ``strict``: raised)."""
    case = Case(**json.loads(row["case"]))
    try:
        volume = load_case(case, recipe, spacing, size_2d, channels, label_values)
    except Exception as e:  # noqa: BLE001 - any read/decode failure quarantines the case, never the run
        path = getattr(e, "path", None) or ",".join(case.image)
        reason = str(e) if isinstance(e, BadInput) else f"{type(e).__name__}: {e}"
        if strict:
            raise BadInput(f"case {case.case_id!r}, {path}: {reason}", path) from e
        logger.warning("quarantined %s: %s", path, reason)
        return None, {"case_id": case.case_id, "split": case.split, "path": path, "reason": reason}
    out = {"case_id": volume["case_id"], "split": volume["split"], "image": volume["image"].astype(dtype, copy=False),
           "spacing": np.asarray(volume["spacing"], np.float64), "affine": np.asarray(volume["affine"], np.float64)}
    for key in ("label", "target") if keep_label else ("target",):
        if volume.get(key) is not None:
            out[key] = volume[key]
    return out, None


def _volume_row(row: dict, **kwargs) -> list[dict]:
    volume, _ = _volume(row, **kwargs)
    return [volume] if volume is not None else []


def _volume_kwargs(data: DataConfig, source: Source, recipe: str, cases: list[Case], dtype: str = "float32",
                   keep_label: bool = True) -> dict:
    keep_label = keep_label and all(c.label is not None for c in cases)
    return dict(keep_label=keep_label, recipe=recipe, spacing=data.spacing, size_2d=image_size_2d(data),
                channels=source.channels, strict=data.strict, dtype=dtype,
                label_values=label_values(source, keep_label))


# --------------------------------------------------------------------------- datasets


def case_dataset(data: DataConfig, source: Source, recipe: str, split: str | list[str] = "train",
                 dtype: str = "float32") -> ray.data.Dataset:
    """Preprocessed whole volumes, one row per usable case (lazy; nothing runs until consumed).

    Args:
        data: spacing, 2D size, strict mode.
        source: the resolved source (``resolve_source(data)``).
        recipe: the resolved recipe (``resolve_recipe(data, source)``).
        split: one split or a list of splits.
        dtype: of the ``image`` column.

    Returns:
        Rows ``{"image": [C, *spatial], "label": [*spatial] (when every selected case is labelled),
        "target": [K] (CXR), "case_id", "split", "spacing": [3], "affine": [4, 4]}``.

    Raises:
        ValueError: the split is empty.
    """
    cases = _select(source, split, data)
    _missing_entries(source)
    return _listing(cases).flat_map(_volume_row, fn_kwargs=_volume_kwargs(data, source, recipe, cases, dtype))


def cache_matches(manifest: dict, data: DataConfig, recipe: str) -> None:
    """Check that a volume cache was preprocessed as ``data`` asks (recipe, spacing, 2D size).

    Raises:
        ValueError: it was made with other preprocessing.
    """
    want = {"recipe": recipe, "spacing": recipe_spacing(data, recipe)}
    if manifest["spatial_dims"] == 2:
        want["size_2d"] = image_size_2d(data)
    wrong = [f"{k} {manifest.get(k)!r} (config: {v!r})" for k, v in want.items() if manifest.get(k) != v]
    if wrong:
        raise ValueError(f"cache {data.cache_dir!r} was preprocessed with {', '.join(wrong)}; re-run "
                         "jobs/prepare_data.py with this config or fix data.recipe / data.spacing")


def recipe_spacing(data: DataConfig, recipe: str) -> list[float] | None:
    spacing = data.spacing or RECIPES[recipe].spacing
    return [float(v) for v in spacing] if spacing else None


@ray.remote
def _keep_case(row: dict, after, columns: list[str], kwargs: dict) -> tuple[dict | None, int]:
    """One case's ``columns`` preprocessed into Ray's object store, and 1 (or ``None`` and 0 when it was
    unusable). ``after``, the count of the case ``at_once`` places earlier, is only waited for: it bounds
    how many cases preprocess at once."""
    volume, _ = _volume(row, **kwargs)
    return ({k: volume[k] for k in columns if k in volume} if volume else None), int(volume is not None)


@dataclasses.dataclass(frozen=True)
class TrainVolumes:
    """A run's training volumes: ``volumes`` the workers read (kept in Ray's object store, or their share of the
    cache's files), or a ``dataset`` Ray Data streams to them (preprocessed from the source every epoch)."""

    dataset: ray.data.Dataset | None = None
    volumes: KeptVolumes | CachedVolumes | None = None
    path: str = ""
    """How the volumes reach the workers, and why (the run logs it)."""


def kept_budget(data: DataConfig) -> int:
    """Bytes of preprocessed volumes a run keeps in Ray's object store: ``data.kept_budget`` of the cluster's
    object store."""
    return int(data.kept_budget * ray.cluster_resources().get("object_store_memory", 0))


def estimate_bytes(data: DataConfig, source: Source, recipe: str, cases: list[Case], columns: list[str]) -> int:
    """The preprocessed size of ``cases``: each source's (each pool entry's) first usable case preprocessed here,
    times its number of cases (a source's volumes share a recipe and, mostly, a size)."""
    groups: dict[str, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.case_id.partition(".")[0] if source.kind == POOL else "", []).append(c)
    kwargs = _volume_kwargs(data, source, recipe, cases, keep_label="label" in columns)
    total = 0
    for group in groups.values():
        for item in _items(group[:3]):  # the first usable of three
            volume, _ = _volume(item, **{**kwargs, "strict": False})
            if volume is not None:
                total += len(group) * sum(volume[k].nbytes for k in columns if isinstance(volume.get(k), np.ndarray))
                break
    return total


def train_volumes(
    data: DataConfig, columns: list[str], source: Source | None, recipe: str, manifest: dict | None = None,
    split: str = "train", at_once: int = 0, cache_out: str | None = None,
) -> TrainVolumes:
    """What Ray Train consumes: preprocessed whole volumes, from the cache or from the source.

    Training workers cut fresh crops from them every epoch (:mod:`rayssl.data.crops`). From a source, the volumes
    are preprocessed once and kept in Ray's object store while they fit ``data.kept_budget`` of it
    (``data.keep_volumes=auto``, the default; ``true``: always); beyond it they are prepared into the volume cache
    (``cache_out``; resumable) and each worker streams its share of the cache's files.
    ``keep_volumes=false`` preprocesses them again every epoch (Ray Data). With ``data.cache_dir`` the cache is
    streamed.

    Kept volumes are preprocessed by Ray tasks, one per case, started here; the run can start at once (its
    workers import and build their engines meanwhile). A pool with weights streams some volumes more than once an
    epoch (:mod:`rayssl.data.pool_shares`), kept or cached.

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
        cache_out: where ``keep_volumes=auto`` prepares the cache past the budget (every node must read it: the
            run's storage, :func:`default_out` of it); default :func:`default_out` under the current directory.

    Raises:
        ValueError: the cache was preprocessed otherwise, or ``data.cache_dir`` is set and ``manifest`` is not; a
            pool with weights and ``data.keep_volumes=false``.
    """
    columns = ["case_id", *[c for c in columns if c != "case_id"]]
    if data.cache_dir:
        if manifest is None:
            raise ValueError(f"data.cache_dir={data.cache_dir!r}: pass its manifest (read_manifest) to train_volumes")
        cache_matches(manifest, data, recipe)
        return TrainVolumes(volumes=read_volumes(data.cache_dir, split, manifest, columns),
                            path=f"streamed from the cache {data.cache_dir}")
    check_streamable(data, source)
    if data.keep_volumes is False:
        return TrainVolumes(dataset=case_dataset(data, source, recipe, split).select_columns(columns),
                            path="preprocessed every epoch (data.keep_volumes=false)")
    cases = _select(source, split, data)
    path = "kept in Ray's object store (data.keep_volumes=true)"
    if data.keep_volumes == "auto":
        need, budget = estimate_bytes(data, source, recipe, cases, columns), kept_budget(data)
        size = f"about {need / 2**30:.2f} GiB for {len(cases)} cases against a budget of {budget / 2**30:.2f} GiB"
        if need > budget:
            prepare_cfg = PrepareConfig(data=data.model_copy(update={"splits": [split]}), out=cache_out)
            out = prepare(prepare_cfg, source, recipe)
            return TrainVolumes(volumes=read_volumes(out, split, columns=columns),
                                path=f"streamed from the cache {out} ({size}, data.kept_budget={data.kept_budget})")
        path = f"kept in Ray's object store ({size}, data.kept_budget={data.kept_budget})"
    _missing_entries(source)
    kwargs = _volume_kwargs(data, source, recipe, cases, keep_label="label" in columns)
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
    return TrainVolumes(volumes=kept, path=path)


# --------------------------------------------------------------------------- prepare


def default_out(data: DataConfig, storage: str = "runs") -> str:
    """``<storage>/data/<source>-<recipe>-<spacing>-<dtype>``, ``storage`` a folder (made absolute) or a URI: runs
    preprocessing a source otherwise get caches of their own."""
    spacing = "x".join(f"{v:g}" for v in data.spacing) if data.spacing else "recipe"
    name = re.sub(r"[^A-Za-z0-9.]+", "-", f"{data.source}-{data.recipe or 'auto'}-{spacing}-{data.patch_dtype}")
    name = name.strip("-.")[:120]
    return join(storage if is_uri(storage) else os.path.abspath(storage), "data", name)


def _preparation(data: DataConfig, source: Source, recipe: str) -> dict:
    """What a cache's case files depend on: a re-run into the same folder must match it to reuse them."""
    return {"format": VOLUME_FORMAT, "source": data.source, "recipe": recipe, "spacing": recipe_spacing(data, recipe),
            "size_2d": image_size_2d(data) if source.spatial_dims == 2 else None, "dtype": data.patch_dtype,
            "pool": [[e.name, e.source, e.recipe] for e in source.pool]}


def _check_reusable(out: str, want: dict) -> None:
    manifest = read_json(join(out, MANIFEST))
    if manifest is not None and manifest.get("format") != VOLUME_FORMAT:
        raise ValueError(f"{out!r} holds a cache of format {manifest.get('format')!r}; delete it or choose another "
                         f"out (it was made with: {rebuild_command(out, manifest)})")
    have = read_json(join(out, PREPARATION))
    if have is not None and have != want:
        wrong = ", ".join(f"{k} {have.get(k)!r} (now {v!r})" for k, v in want.items() if have.get(k) != v)
        raise ValueError(f"{out!r} holds volumes prepared with {wrong}; choose another out, or delete the folder to "
                         "prepare it again")


def _source_name(data: DataConfig, source: Source, entry: dict) -> str:
    """The source a quarantine entry belongs to: a pool's entry name (from the case id, or for a file the listing
    found missing, the entry whose folder holds it), else ``data.source``."""
    if source.kind != POOL:
        return str(data.source)
    if entry["case_id"]:
        return entry["case_id"].partition(".")[0]
    for e in source.pool:
        root = e.source.partition(":")[2].rstrip("/")
        if root and entry["path"].startswith(root + "/"):
            return e.name
    return "pool"


def _placement(out: str):
    """Where prepare's tasks run: across the cluster for an object-store URI; on this node for a local folder
    (another node's disk is not this one's)."""
    if is_uri(out) and not out.startswith("file://"):
        return "SPREAD"
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


@ray.remote
def _prepare_case(item: dict, out: str, split: str, kwargs: dict) -> dict:
    """Preprocess one case and write its file: ``{"file", "bytes"}``, or ``{"quarantined": entry}``."""
    volume, entry = _volume(item, **kwargs)
    if volume is None:
        return {"quarantined": entry}
    return {"file": write_case(out, split, volume), "bytes": int(volume["image"].nbytes)}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _run_tasks(todo: list[Case], out: str, split: str, kwargs: dict, skipped: int, every_s: float = 10.0) -> list[dict]:
    """One task per case, at most two per CPU in flight; logs progress with an ETA every ``every_s`` seconds."""
    placement = _placement(out)
    limit = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    items, pending, results = iter(_items(todo)), [], []
    start = last = time.monotonic()
    while True:
        for item in items:
            pending.append(_prepare_case.options(scheduling_strategy=placement).remote(item, out, split, kwargs))
            if len(pending) >= limit:
                break
        if not pending:
            return results
        ready, pending = ray.wait(pending, num_returns=1)
        results += ray.get(ready)
        now = time.monotonic()
        if now - last >= every_s or len(results) == len(todo):
            last, rate = now, len(results) / max(now - start, 1e-9)
            bad = sum("quarantined" in r for r in results)
            logger.info("prepare %s: %d/%d cases (%d already in the cache), %d quarantined, %.1f cases/s, ETA %s",
                        split, len(results) + skipped, len(todo) + skipped, skipped, bad, rate,
                        _duration((len(todo) - len(results)) / rate))


def prepare(cfg: PrepareConfig, source: Source, recipe: str) -> str:
    """Read and preprocess ``cfg.data.splits`` once and write one file per case with ``manifest.json`` and
    ``quarantine.json``: the cache training crops from (``data.cache_dir``; :mod:`rayssl.data.cache`).

    One Ray task per case, across the cluster for an ``s3://`` / ``gs://`` output, on this node for a local folder.
    Resumable: a re-run into the same folder skips the cases whose file is there (it must have been prepared with
    the same source, recipe, spacing and dtype) and retries the quarantined ones; a killed run loses at most the
    cases in flight. A pool's quarantine is kept by source.

    Args:
        cfg: ``data`` (what to read and how to preprocess it; a source or a pool), ``out`` (default
            :func:`default_out`).
        source: the resolved source or pool (before starting Ray).
        recipe: the resolved recipe (``resolve_recipe(cfg.data, source)``).

    Returns:
        The output folder (or URI).

    Raises:
        ValueError: every case a split lists was unusable, or ``out`` holds volumes prepared otherwise. A split
            that lists no case (a source of one case or series: its case is in "val") is written empty with a
            warning; the training jobs check the splits they need.
        QuarantineError: ``data.strict`` and some inputs were unusable (all are listed; no manifest is written, the
            cases written are kept for a re-run).
    """
    data = cfg.data
    out = cfg.out or default_out(data)
    out = out if is_uri(out) else os.path.abspath(out)
    preparation = _preparation(data, source, recipe)
    _check_reusable(out, preparation)
    write_json(out, PREPARATION, preparation)
    entries = _missing_entries(source)
    kwargs = {"dtype": data.patch_dtype, "strict": False}  # collect every bad input first, raise after

    splits = {}
    for split in data.splits:
        cases = source.split(split)
        if not cases:  # caching needs no split: a source of one case has it in "val"
            where = ", ".join(f"{s} {n}" for s, n in sorted(Counter(c.split for c in source.cases).items())) or "none"
            logger.warning("split %r of source %r lists no case (its %d case(s) by split: %s); written empty",
                           split, data.source, len(source.cases), where)
        have = cached_files(out, split)
        todo = [c for c in cases if case_file(c.case_id) not in have]
        results = _run_tasks(todo, out, split, {**_volume_kwargs(data, source, recipe, cases), **kwargs},
                             len(cases) - len(todo))
        entries += [r["quarantined"] for r in results if "quarantined" in r]
        done = have | {r["file"] for r in results if "file" in r}
        usable = [i for i, c in enumerate(cases) if case_file(c.case_id) in done]
        splits[split] = {"cases": len(usable), "listed": len(cases), "skipped": len(cases) - len(todo),
                         "files": [case_file(cases[i].case_id) for i in usable],
                         "bytes_written": sum(r.get("bytes", 0) for r in results)}
        items = epoch_items(source, cases, data.seed) if split == "train" and source.pool else None
        if items is not None:  # a weighted pool's repeats, over the usable cases
            index = {i: n for n, i in enumerate(usable)}
            splits[split]["items"] = [[index[i], r] for i, r in items if i in index]
        logger.info("split %r: %d of %d cases in the cache (%d were already)", split, len(usable), len(cases),
                    splits[split]["skipped"])

    for e in entries:
        e["source"] = _source_name(data, source, e)
    entries.sort(key=lambda e: (e["source"], e["path"], e["case_id"]))
    write_json(out, QUARANTINE, entries)
    by_source = Counter(e["source"] for e in entries)
    logger.info("quarantined %d of %d inputs%s (see %s)", len(entries), sum(s["listed"] for s in splits.values())
                + len(source.missing), "".join(f", {n} from {name}" for name, n in sorted(by_source.items())),
                QUARANTINE)
    if data.strict and entries:
        raise QuarantineError(listing_message(f"source {data.source!r}", [(e["path"], e["reason"]) for e in entries]))
    empty = [s for s in data.splits if splits[s]["listed"] and splits[s]["cases"] == 0]
    if empty:
        raise ValueError(f"every case of split(s) {', '.join(empty)} was unusable (see {join(out, QUARANTINE)}); "
                         "no manifest was written")

    manifest = {
        **preparation,
        "rayssl_version": rayssl.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_kind": source.kind,
        "source_root": source.root,
        "recipe_steps": dataclasses.asdict(RECIPES[recipe]),
        "spatial_dims": source.spatial_dims,
        "channels": source.channels,
        "modality": {str(k): v for k, v in source.modality.items()},
        "labels": {str(k): v for k, v in source.labels.items()},
        "class_names": list(source.class_names),
        "splits": splits,
        "quarantined": entries,
        "quarantined_by_source": dict(sorted(by_source.items())),
        "data": dump_config(data),
    }
    write_json(out, MANIFEST, manifest)
    return out
