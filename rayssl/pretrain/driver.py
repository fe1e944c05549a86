"""``pretrain(cfg)``: the driver side of self pre-training (one Ray Train run, launched by :mod:`rayssl.train.launch`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

from rayssl.config import PretrainConfig, dump_config
from rayssl.data.crops import patches_per_case
from rayssl.data.sources import Source
from rayssl.pretrain.loop import train_loop_per_worker
from rayssl.pretrain.methods import export_meta, export_state
from rayssl.train.artifacts import provenance
from rayssl.train.layout import RunDir
from rayssl.train.trackers import check_installed
from rayssl.models.weights_file import save_export
from rayssl.train.checkpoint import load_weights
from rayssl.train.worker import steps_per_epoch
from rayssl.train.launch import (RunPlan, check_cases_per_worker, finish_run, fit, max_workers, open_run, run_dir,
                                 spare_cpus)
from rayssl.train.optim import effective_lr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainPlan(RunPlan):
    """A pre-training run, resolved once on the driver (before Ray starts); ``num_cases`` counts the cases
    left after quarantine once the volumes are preprocessed."""

    channels: int
    source: Source | None = None
    """The resolved source (``None`` for a cache or a given dataset); the driver's only."""
    manifest: dict | None = None
    """The cache's manifest (``data.cache_dir``); the driver's only."""


def plan_pretrain(cfg: PretrainConfig, dataset=None) -> PretrainPlan:
    """Resolve the source or the pool of sources (or read the cache's manifest), the recipe, the lr and the run
    directory. A pool's recipe is its first source's (each case carries its own); its ``num_cases`` are the volumes
    an epoch streams (with weights, some cases more than once: :mod:`rayssl.data.pool_shares`).

    Args:
        cfg: the pre-training config.
        dataset: a Ray Dataset of preprocessed volumes to crop from instead (see :func:`pretrain`; Ray must be
            up): its cases are counted and its first volume's shape read; the source's checks do not apply.

    Raises:
        ValueError: no training cases, fewer cases than workers, Models Genesis on a recipe whose
            intensities leave [0, 1], or a pool whose sources do not share one space (named).
    """
    from rayssl.data.pipeline import resolve_recipe
    from rayssl.config.recipes import check_genesis_recipe

    source = manifest = None
    if dataset is not None:
        shape = dataset.take(1)[0]["image"].shape
        num_cases, channels, recipe = dataset.count(), int(shape[0]), cfg.data.recipe
        patches = patches_per_case(cfg.data, shape)
    else:
        if cfg.data.cache_dir:
            from rayssl.data.cache import read_manifest, read_volumes

            manifest = read_manifest(cfg.data.cache_dir)
            num_cases, channels = read_volumes(cfg.data.cache_dir, "train", manifest).cases(), int(manifest["channels"])
            recipe = cfg.data.recipe or manifest["recipe"]  # the pipeline checks that the cache was made with it
        else:
            from rayssl.data.sources import resolve_pool, resolve_source

            source = resolve_pool(cfg.data) if cfg.data.is_pool else resolve_source(cfg.data)
            num_cases, channels = len(source.split("train")), source.channels
            if num_cases == 0:
                raise ValueError(f"data.source={cfg.data.source!r} has no training cases")
            recipe = resolve_recipe(cfg.data, source)
            if source.pool:
                num_cases = _pool_volumes(cfg, source)
        patches = patches_per_case(cfg.data)
        check_cases_per_worker(num_cases, max_workers(cfg.scale), cfg.data.source)
        steps_per_epoch(num_cases, patches, max_workers(cfg.scale), cfg.batch_size, cfg.optim.grad_accum)
        check_installed(cfg.run.tracker)
        if cfg.model.method == "genesis":  # the source's own recipe, when data.recipe is unset
            check_genesis_recipe(recipe)
    total_batch = cfg.total_batch
    return PretrainPlan(run_dir(cfg.run, f"{cfg.preset or 'pretrain'}-{cfg.model.method}"), num_cases, patches,
                        effective_lr(cfg.optim, total_batch), recipe, channels, source, manifest)


def _pool_volumes(cfg: PretrainConfig, source: Source) -> int:
    """A pool's volumes an epoch (its training cases, some repeated by its weights); logs each source's share."""
    from rayssl.data.pool_shares import check_streamable, describe_pool, epoch_items

    train = source.split("train")
    check_streamable(cfg.data, source)
    log.info(describe_pool(source, train, cfg.data.seed))
    items = epoch_items(source, train, cfg.data.seed)
    return len(train) if items is None else len(items)


def pretrain(cfg: PretrainConfig, dataset=None, plan: PretrainPlan | None = None) -> str:
    """Run self pre-training; returns the run directory (local path or URI).

    Args:
        cfg: the pre-training config.
        dataset: optional Ray Dataset of preprocessed volumes (``case_id`` and ``image`` ``[C, *spatial]``
            columns) to crop from instead of the one ``cfg.data`` describes.
        plan: :func:`plan_pretrain` of ``cfg`` (and ``dataset``), when the caller made it already (before
            starting Ray).

    The run directory ``<run.storage_path>/<run.name>`` holds Ray Train's checkpoints,
    ``metrics.jsonl``, ``previews/*.png``, ``export/encoder.safetensors`` (+ ``.json`` sidecar) and
    ``result.json`` (:class:`~rayssl.train.layout.RunDir`). Re-running with the same ``run.name`` resumes from
    the last checkpoint.
    """
    plan = plan or plan_pretrain(cfg, dataset)
    if dataset is None:
        from rayssl.data.pipeline import default_out, train_volumes

        volumes = train_volumes(cfg.data, ["image"], plan.source, plan.recipe, plan.manifest,
                                at_once=spare_cpus(cfg.scale), cache_out=default_out(cfg.data, plan.run.storage))
        log.info("training volumes: %d cases, %s", plan.num_cases, volumes.path)
        ds, plan = volumes.dataset, dataclasses.replace(plan, volumes=volumes.volumes)
    else:
        ds = dataset.select_columns(["case_id", "image"])
    files = open_run(cfg, plan.run)
    log.info("pre-training %s (%s) on %s: %d cases x %d fresh crops/epoch, %d epochs, lr %.3g, run dir %s",
             cfg.model.method, cfg.model.size, cfg.data.source, plan.num_cases, plan.patches_per_case, cfg.epochs,
             plan.lr, plan.run.path)
    worker_plan = dataclasses.replace(plan, source=None, manifest=None)
    result, wall = fit(train_loop_per_worker, {"cfg": dump_config(cfg), "plan": worker_plan},
                       cfg.scale, cfg.data, cfg.run, plan.run, ds)
    metrics = result.metrics or {}

    with result.checkpoint.as_directory() as ckpt:
        weights = export_state(cfg.model.method, load_weights(ckpt))
    meta = {**export_meta(cfg, plan.channels), "steps": metrics.get("step"), "final_loss": metrics.get("loss")}
    stem = f"{RunDir.EXPORT}/{RunDir.export_stem(cfg.model.method)}"
    weights_path, sidecar = save_export(weights, meta, files.path(stem))
    summary = {
        "method": cfg.model.method,
        "preset": cfg.preset,
        "final_loss": metrics.get("loss"),
        "steps": metrics.get("step"),
        "epochs": metrics.get("epoch"),
        "samples": metrics.get("samples"),
        "samples_per_s": metrics.get("samples", 0) / wall if wall > 0 else None,
        "wall_time_s": wall,
        "world_size": metrics.get("world_size"),
        "resumes": metrics.get("resumes"),
        "peak_mem_mb_max": metrics.get("peak_mem_mb_max"),
        "weights": files.uri(f"{RunDir.EXPORT}/{weights_path.name}"),
        "checkpoint": result.checkpoint.path,
        "run_dir": plan.run.path,
        "provenance": provenance(),
    }
    artifacts = [f"{RunDir.EXPORT}/{weights_path.name}", f"{RunDir.EXPORT}/{sidecar.name}",
                 *files.glob(f"{RunDir.PREVIEWS}/*.png")]
    finish_run(files, cfg.run, plan.run, summary, artifacts)
    log.info(json.dumps({k: summary[k] for k in ("final_loss", "steps", "samples_per_s", "weights")}))
    return plan.run.path
