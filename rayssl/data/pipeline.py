"""Ray Data pipeline: list cases -> read + validate + preprocess -> patches -> (optional) Parquet cache.

``ray.data.from_items`` holds the cheap case listing (one block per case or few cases, so decoding
runs in parallel); a ``flat_map`` reads and preprocesses one case (``load_case``) and cuts it into
patches (``sample_patches``) in the same task, so only patches leave a task. Execution streams: memory
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
from datetime import datetime, timezone

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import ray
import ray.data

import rayssl
from rayssl.config import DataConfig, PrepareConfig, dump_config
from rayssl.data.cache import QUARANTINE, delete_split, join, read_manifest, read_patches, write_json, write_patches
from rayssl.data.context import dataset_context
from rayssl.data.io import BadInput, is_uri, open_uri
from rayssl.data.patches import case_rng, sample_patches
from rayssl.data.recipes import RECIPES, load_case
from rayssl.data.sources import Case, Source, resolve_source

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CASES_PER_BLOCK = 4
"""Cases per block of the listing (one Ray task each) once there are more blocks than 2 per CPU."""
MAX_BLOCKS = 1024


class QuarantineError(ValueError):
    """Strict mode: some inputs could not be used; the message lists each path and reason."""


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
    name = data.recipe or source.recipe
    recipe = RECIPES[name]
    if len(data.roi) != source.spatial_dims:
        raise ValueError(
            f"roi {tuple(data.roi)} has {len(data.roi)} axes but source {data.source!r} holds "
            f"{source.spatial_dims}D images; set data.roi to {source.spatial_dims} ints"
        )
    if recipe.spatial_dims not in (0, source.spatial_dims):  # 0: any dimensionality
        raise ValueError(f"recipe {name!r} is for {recipe.spatial_dims}D images, source {data.source!r} is {source.spatial_dims}D")
    return name


def image_size_2d(data: DataConfig) -> int:
    # 2D images are resized to a square of at least 224 (the papers' size); a smaller roi crops it
    return max(224, *data.roi) if len(data.roi) == 2 else 224


def _local(path: str | None) -> str | None:
    # Ray workers may run in another working directory: pin relative local paths on the driver
    return path if path is None or is_uri(path) else os.path.abspath(os.path.expanduser(path))


def _items(cases: list[Case]) -> list[dict]:
    items = []
    for c in cases:
        c = dataclasses.replace(c, image=[_local(p) for p in c.image], label=_local(c.label))
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
    if data.strict and source.missing:
        raise QuarantineError(_listing_message(f"source {data.source!r}", [{"path": p, "reason": r} for p, r in source.missing]))
    if quarantine is not None and source.missing:
        ray.get([quarantine.add.remote(p, r) for p, r in source.missing])
    for path, reason in source.missing:
        logger.warning("quarantined %s: %s", path, reason)


def _listing_message(what: str, entries: list[dict]) -> str:
    lines = "\n".join(f"  {e['path']}: {e['reason']}" for e in entries)
    return f"{what}: {len(entries)} unusable input(s) (strict mode):\n{lines}"


# --------------------------------------------------------------------------- per-case work (Ray tasks)


def _load(row: dict, recipe: str, spacing, size_2d: int, keep_label: bool, quarantine, strict: bool) -> dict | None:
    """``load_case`` on one listed case; an unusable case is recorded and gives ``None``."""
    case = Case(**json.loads(row["case"]))
    try:
        volume = load_case(case, recipe, spacing, size_2d)
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


def _patches_of_case(row: dict, data: DataConfig, epoch: int, keep_label: bool, recipe: str, quarantine) -> list[dict]:
    volume = _load(row, recipe, data.spacing, image_size_2d(data), keep_label, quarantine, data.strict)
    if volume is None:
        return []
    return sample_patches(volume, data, case_rng(data.seed, volume["case_id"], epoch))


def _volume_row(row: dict, keep_label: bool, recipe: str, spacing, size_2d: int, quarantine, strict: bool) -> list[dict]:
    volume = _load(row, recipe, spacing, size_2d, keep_label, quarantine, strict)
    if volume is None:
        return []
    out = {"case_id": volume["case_id"], "split": volume["split"], "image": volume["image"],
           "spacing": np.asarray(volume["spacing"], np.float64), "affine": np.asarray(volume["affine"], np.float64)}
    for key in ("label", "target"):
        if volume.get(key) is not None:
            out[key] = volume[key]
    return [out]


# --------------------------------------------------------------------------- datasets


def case_dataset(
    data: DataConfig,
    split: str | list[str] = "train",
    source: Source | None = None,
    quarantine=None,
) -> ray.data.Dataset:
    """Preprocessed whole volumes, one row per usable case (e.g. for sliding-window evaluation).

    Args:
        data: source, recipe, spacing, strict mode.
        split: one split or a list of splits.
        source: an already resolved source (default: ``resolve_source(data)``).
        quarantine: a :class:`QuarantineLog` handle that receives unusable inputs.

    Returns:
        Rows ``{"image": [C, *spatial], "label": [*spatial] (when every selected case is labelled),
        "target": [K] (CXR), "case_id", "split", "spacing": [3], "affine": [4, 4]}``.
    """
    source = source or resolve_source(data)
    recipe = resolve_recipe(data, source)
    cases = _select(source, split, data)
    _record_missing(source, data, quarantine)
    keep_label = all(c.label is not None for c in cases)
    return _listing(cases).flat_map(
        _volume_row,
        fn_kwargs=dict(keep_label=keep_label, recipe=recipe, spacing=data.spacing, size_2d=image_size_2d(data),
                       quarantine=quarantine, strict=data.strict),
    )


def _patch_stream(data: DataConfig, source: Source, cases: list[Case], epoch: int, quarantine) -> ray.data.Dataset:
    recipe = resolve_recipe(data, source)
    keep_label = all(c.label is not None for c in cases)
    return _listing(cases).flat_map(
        _patches_of_case,
        fn_kwargs=dict(data=data, epoch=epoch, keep_label=keep_label, recipe=recipe, quarantine=quarantine),
    )


def patch_dataset(
    data: DataConfig, split: str | list[str] = "train", epoch: int = 0, quarantine=None
) -> ray.data.Dataset:
    """Stream patches straight from the volumes (lazy; nothing runs until consumed).

    Args:
        data: source, recipe, roi, sampling, seed, strict mode.
        split: one split or a list of splits.
        epoch: selects new random crops per epoch (same epoch, same crops).
        quarantine: a :class:`QuarantineLog` handle that receives unusable inputs (else they are logged).

    Returns:
        Rows ``{"image": [C, *roi], "label": [*roi] uint8 (labelled cases), "target": [K] (CXR),
        "case_id", "split", "origin": [ndim]}`` (+ ``tissue_fraction`` with ``genesis`` sampling).

    Raises:
        ValueError: roi/recipe do not fit the source, or the split is empty.
        QuarantineError: strict mode and the source lists missing files.
    """
    source = resolve_source(data)
    cases = _select(source, split, data)
    _record_missing(source, data, quarantine)
    return _patch_stream(data, source, cases, epoch, quarantine)


def train_dataset(data: DataConfig, split: str = "train", epoch: int = 0) -> ray.data.Dataset:
    """What Ray Train consumes: the Parquet cache when ``data.cache_dir`` is set, else streamed volumes.

    Args:
        data: the data config; with ``cache_dir`` its roi and dtype must match the cache's manifest.
        split: the split to read.
        epoch: only used when streaming from volumes (new random crops per epoch).
    """
    if not data.cache_dir:
        return patch_dataset(data, split, epoch)
    manifest = read_manifest(data.cache_dir)
    if tuple(manifest["roi"]) != tuple(data.roi) or manifest["dtype"] != data.patch_dtype:
        raise ValueError(
            f"cache {data.cache_dir!r} holds roi {tuple(manifest['roi'])} {manifest['dtype']} patches but the "
            f"config asks for roi {tuple(data.roi)} {data.patch_dtype}; re-run prepare_data or fix data.roi"
        )
    return read_patches(data.cache_dir, split)


# --------------------------------------------------------------------------- prepare


def default_out(data: DataConfig) -> str:
    """``runs/data/<source>-<roi>-<sampling>`` under the current directory."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", data.source).strip("-")
    return os.path.abspath(os.path.join("runs", "data", f"{name}-{'x'.join(map(str, data.roi))}-{data.sampling}"))


def _split_stats(out: str, split: str, data: DataConfig) -> dict:
    # counts from the Parquet files themselves (one small column), so the manifest matches the shards
    fs, root = open_uri(join(out, split))
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return {"cases": 0, "patches": 0, "files": 0}
    dataset = pads.dataset(root, filesystem=fs, format="parquet")
    columns = ["case_id", "tissue_fraction"] if data.sampling == "genesis" else ["case_id"]
    table = dataset.to_table(columns=columns)
    stats = {"cases": len(set(table.column("case_id").to_pylist())), "patches": table.num_rows,
             "files": len(dataset.files)}
    if data.sampling == "genesis":
        fractions = table.column("tissue_fraction").to_numpy()
        stats["below_min_tissue_fraction"] = int((fractions < data.min_tissue_fraction).sum())
    return stats


def prepare(cfg: PrepareConfig) -> str:
    """Run the pipeline over ``cfg.data.splits`` and write Parquet shards, ``manifest.json`` and
    ``quarantine.json``.

    Args:
        cfg: ``data`` (what to read and how to patchify), ``out`` (default :func:`default_out`),
            ``rows_per_file``.

    Returns:
        The output folder (or URI).

    Raises:
        QuarantineError: ``data.strict`` and some inputs were unusable (all are listed; the shards
            written are removed and no manifest is written).
    """
    data = cfg.data
    out = cfg.out or default_out(data)
    if not is_uri(out):
        out = os.path.abspath(out)
    source = resolve_source(data)
    recipe = resolve_recipe(data, source)
    log = QuarantineLog.remote()
    lax = data.model_copy(update={"strict": False})  # collect every bad input first, raise after
    _record_missing(source, lax, log)

    splits, listed = {}, 0
    for split in data.splits:
        cases = [c for c in source.cases if c.split == split]
        listed += len(cases)
        if not cases:
            print(f"split {split!r}: no cases in {data.source!r}, skipped")
            delete_split(out, split)
            splits[split] = {"cases": 0, "patches": 0, "files": 0, "listed": 0}
            continue
        write_patches(_patch_stream(lax, source, cases, 0, log), out, split, cfg.rows_per_file)
        splits[split] = {**_split_stats(out, split, data), "listed": len(cases)}
        print(f"split {split!r}: {splits[split]['patches']} patches from {splits[split]['cases']} of {len(cases)} cases")

    entries = sorted(ray.get(log.entries.remote()), key=lambda e: (e["path"], e["case_id"]))
    ray.kill(log)
    write_json(out, QUARANTINE, entries)
    total = listed + len(source.missing)
    print(f"quarantined {len(entries)} of {total} inputs (see {QUARANTINE})")
    if data.strict and entries:
        for split in data.splits:
            delete_split(out, split)
        raise QuarantineError(_listing_message(f"source {data.source!r}", entries))

    spec = RECIPES[recipe]
    manifest = {
        "format": "rayssl-patches/1",
        "rayssl_version": rayssl.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": data.source,
        "source_kind": source.kind,
        "source_root": source.root,
        "recipe": dataclasses.asdict(spec),
        "spacing": list(data.spacing or spec.spacing) if (data.spacing or spec.spacing) else None,
        "roi": list(data.roi),
        "patch_shape": [source.channels, *data.roi],
        "dtype": data.patch_dtype,
        "channels": source.channels,
        "modality": {str(k): v for k, v in source.modality.items()},
        "labels": {str(k): v for k, v in source.labels.items()},
        "class_names": list(source.class_names),
        "sampling": data.sampling,
        "patches_per_volume": data.patches_per_volume,
        "seed": data.seed,
        "splits": splits,
        "quarantined": entries,
        "data": dump_config(data),
        "rows_per_file": cfg.rows_per_file,
    }
    write_json(out, "manifest.json", manifest)
    return out
