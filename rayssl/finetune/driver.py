"""``finetune(cfg)``: the driver side of fine-tuning (one Ray Train run, launched by :mod:`rayssl.train.launch`),
then the test evaluation."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from rayssl.config import FinetuneConfig, dump_config
from rayssl.data.crops import patches_per_case
from rayssl.data.sources import Source
from rayssl.data.io import write_nifti_like
from rayssl.finetune.evaluate import evaluate_classification, evaluate_segmentation, save_overlay, write_csv
from rayssl.finetune.loop import train_loop_per_worker
from rayssl.finetune.models import build_model
from rayssl.finetune.task import TaskSpec, case_dicts, load_eval_cases, task_spec
from rayssl.finetune.weights import load_pretrained, resolve_pretrained
from rayssl.train.artifacts import RunFiles, provenance
from rayssl.train.trackers import check_installed
from rayssl.models.weights_file import read_safetensors
from rayssl.train.worker import steps_per_epoch
from rayssl.train.checkpoint import load_weights
from rayssl.train.launch import (RunPlan, check_cases_per_worker, finish_run, fit, max_workers, open_run, run_dir,
                                 spare_cpus)
from rayssl.train.layout import RunDir
from rayssl.train.optim import effective_lr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetunePlan(RunPlan):
    """A fine-tuning run, resolved once on the driver (before Ray starts)."""

    spec: TaskSpec
    pretrained: Path | None
    """The resolved pre-trained weights (``None``: from scratch)."""
    load_report: dict
    """What :func:`load_pretrained` loaded and what is new (``pretrained_load.json``)."""
    val_cases: list[dict]
    test_cases: list[dict]
    source: Source | None = None
    """The resolved source; the driver's only."""
    manifest: dict | None = None
    """The cache's manifest (``data.cache_dir``: the training volumes come from it); the driver's only."""


def plan_finetune(cfg: FinetuneConfig) -> FinetunePlan:
    """Everything the run needs, checked on the driver before any worker starts.

    Raises:
        ValueError: empty train/validation split, unknown classes, or pre-trained weights that do not
            fit the model (named differences).
    """
    from rayssl.data.pipeline import resolve_recipe
    from rayssl.data.sources import resolve_source

    source = resolve_source(cfg.data)
    recipe = resolve_recipe(cfg.data, source)
    spec = task_spec(cfg, source)
    train, val, test = (source.split(s) for s in ("train", "val", "test"))
    if not train or not val:
        raise ValueError(f"data.source={cfg.data.source!r} needs training and validation cases, got "
                         f"{len(train)} train / {len(val)} val (check data.folds / data.val_fold)")
    if not spec.classification and any(c.label is None for c in train + val + test):
        raise ValueError(f"data.source={cfg.data.source!r}: segmentation needs a label for every case")
    check_cases_per_worker(len(train), max_workers(cfg.scale), cfg.data.source)
    steps_per_epoch(len(train), patches_per_case(cfg.data), max_workers(cfg.scale), cfg.batch_size, cfg.optim.grad_accum)
    check_installed(cfg.run.tracker)
    manifest = None
    if cfg.data.cache_dir:
        from rayssl.data.cache import read_manifest

        manifest = read_manifest(cfg.data.cache_dir)
    pretrained = resolve_pretrained(cfg.pretrained)
    with torch.device("meta"):  # the network's names and shapes, no weights: the workers build and load the real one
        skeleton = build_model(cfg, spec.channels, spec.num_classes)
    with warnings.catch_warnings():  # copying into meta tensors is a no-op PyTorch warns about tensor by tensor
        warnings.filterwarnings("ignore", "for .*: copying from a non-meta parameter", UserWarning)
        report = load_pretrained(skeleton, pretrained)  # checks the weights fit; the report the real network gives
    total_batch = cfg.total_batch
    name = f"{cfg.preset or 'finetune'}-{cfg.model.arch}-{'scratch' if pretrained is None else 'pretrained'}"
    return FinetunePlan(run_dir(cfg.run, name), len(train), patches_per_case(cfg.data), effective_lr(cfg.optim, total_batch),
                        recipe, spec, pretrained, report, case_dicts(val), case_dicts(test), source, manifest)


def _evaluate(model, cfg: FinetuneConfig, plan: FinetunePlan, split: str, files: RunFiles, export: bool) -> dict:
    spec = plan.spec
    cases = plan.val_cases if split == "val" else plan.test_cases
    if not cases:
        return {}
    volumes = load_eval_cases(cases, cfg, plan.recipe, spec.channels, source_labels=not spec.classification)
    if spec.classification:
        res = evaluate_classification(model, volumes, spec.class_names, cfg.batch_size * 4)
    else:  # scored, and written, on each case's own grid
        keep = max(cfg.eval.save_predictions, cfg.eval.overlays) if export else 0
        res = evaluate_segmentation(model, volumes, spec.mode, spec.num_classes, spec.class_names,
                                    cfg.sw_roi, cfg.eval.sw_overlap, cfg.eval.sw_batch_size,
                                    hd95=cfg.eval.hd95, keep=keep, source_grid=True)
        by_id = {v["case_id"]: v for v in volumes}
        image_of = {c["case_id"]: c["image"][0] for c in cases}
        previews = res.pop("previews")
        for i, (case_id, pred) in enumerate(res.pop("predictions").items()):
            vol = by_id[case_id]
            if i < cfg.eval.save_predictions:
                write_nifti_like(pred, image_of[case_id], files.path(f"{RunDir.PREDICTIONS}/{case_id}.nii.gz"))
            if i < cfg.eval.overlays:
                row = next(r for r in res["rows"] if r["case_id"] == case_id)
                save_overlay(vol["image"], vol["label"], previews[case_id],
                             files.path(f"{RunDir.OVERLAYS}/{case_id}.png"),
                             f"{case_id}: mean Dice {row['mean_dice']:.3f}",
                             spec.class_names if spec.mode == "multiclass" else ("edema", "non-enhancing", "enhancing"))
    write_csv(res.pop("rows"), files.path(RunDir.CASES_CSV.format(split=split)))
    res.pop("predictions", None)
    res.pop("previews", None)
    return res


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def finetune(cfg: FinetuneConfig, callbacks: list | None = None, plan: FinetunePlan | None = None) -> str:
    """Fine-tune, keep the best validation checkpoint, evaluate it on validation and test; return the run directory.

    The run directory ``<run.storage_path>/<run.name>`` holds Ray Train's checkpoints, ``metrics.jsonl``
    (one line per validation), ``best.safetensors``, ``cases_val.csv`` / ``cases_test.csv`` (per-case
    scores), ``predictions/*.nii.gz`` (with the preprocessed input's affine), ``overlays/*.png`` and
    ``result.json`` (task, metrics on val and test, pretrained source and what loaded, config).
    Re-running with the same ``run.name`` resumes from the last checkpoint.

    Args:
        cfg: the fine-tuning config.
        callbacks: Ray Train callbacks, e.g. ``[TuneReportCallback()]`` inside a Ray Tune trial; every
            validation reports ``val_metric`` (and ``val_dice`` or ``val_auc``).
        plan: :func:`plan_finetune` of ``cfg``, when the caller made it already (before starting Ray).

    ``data.val_fold=all`` runs :func:`cross_validate` instead and returns its summary folder.
    """
    if cfg.data.val_fold == "all":
        return cross_validate(cfg)
    from rayssl.data.pipeline import default_out, recipe_spacing, train_volumes

    plan = plan or plan_finetune(cfg)
    spec, report = plan.spec, plan.load_report
    files = open_run(cfg, plan.run)
    files.write_json(RunDir.PLAN_CASES, {"val": plan.val_cases, "test": plan.test_cases})
    log.info("fine-tuning %s (%s, %d outputs) on %s: %d train / %d val / %d test cases, lr %.3g, pretrained %s "
             "(%d tensors loaded, %d new), run dir %s", cfg.model.arch, spec.mode, spec.num_classes, cfg.data.source,
             plan.num_cases, len(plan.val_cases), len(plan.test_cases), plan.lr, report["source"] or "none",
             len(report["loaded"]), len(report["new"]), plan.run.path)

    volumes = train_volumes(cfg.data, ["image", spec.target_key], plan.source, plan.recipe, plan.manifest,
                            at_once=spare_cpus(cfg.scale), cache_out=default_out(cfg.data, plan.run.storage))
    log.info("training volumes: %s", volumes.path)
    worker_plan = dataclasses.replace(plan, source=None, manifest=None, load_report={}, test_cases=[],
                                      volumes=volumes.volumes)
    result, wall = fit(train_loop_per_worker, {"cfg": dump_config(cfg), "plan": worker_plan}, cfg.scale, cfg.data,
                       cfg.run, plan.run, volumes.dataset, callbacks)
    last = result.metrics or {}

    model = build_model(cfg, spec.channels, spec.num_classes)
    with result.checkpoint.as_directory() as ckpt:
        best = Path(ckpt) / RunDir.BEST
        weights = read_safetensors(best) if best.is_file() else load_weights(ckpt)
    model.load_state_dict(weights)
    save_file(weights, str(files.path(RunDir.BEST)))
    with torch.no_grad():
        val = _evaluate(model, cfg, plan, "val", files, export=False)
        test = _evaluate(model, cfg, plan, "test", files, export=True)
    summary = _clean({
        "task": {"arch": cfg.model.arch, "mode": spec.mode, "num_classes": spec.num_classes,
                 "class_names": list(spec.class_names), "source": cfg.data.source, "loss": spec.loss,
                 "channels": spec.channels, "recipe": plan.recipe, "spacing": recipe_spacing(cfg.data, plan.recipe),
                 "roi": list(cfg.sw_roi)},
        "metric": spec.metric,
        "val": val, "test": test,
        "pretrained": {"source": report["source"], "method": report["method"], "loaded": len(report["loaded"]),
                       "new": len(report["new"]), "pos_embed_interpolated": report["pos_embed_interpolated"]},
        "best_epoch": last.get("best_epoch"), "best_val_metric": last.get("best_val_metric"),
        "epochs": last.get("epoch"), "steps": last.get("step"), "final_train_loss": last.get("train_loss"),
        "wall_time_s": wall, "world_size": last.get("world_size"),
        "checkpoint": result.checkpoint.path, "run_dir": plan.run.path, "config": dump_config(cfg),
        "provenance": provenance(),
    })
    files.write_json(RunDir.PRETRAINED_LOAD, _clean(report))
    artifacts = [RunDir.PRETRAINED_LOAD, RunDir.BEST, *(RunDir.CASES_CSV.format(split=s) for s in ("val", "test")),
                 *files.glob(f"{RunDir.OVERLAYS}/*.png")]
    finish_run(files, cfg.run, plan.run, summary, artifacts)
    log.info(json.dumps({"val_" + spec.metric: summary["val"].get(spec.metric),
                         "test_" + spec.metric: summary["test"].get(spec.metric), "pretrained": report["source"] or "none"}))
    return plan.run.path


def plan_folds(cfg: FinetuneConfig) -> tuple[RunDir, list[tuple[int, FinetuneConfig, FinetunePlan]]]:
    """The summary folder and, per fold, its config and plan (``data.val_fold=all``); every fold is checked
    before the first one trains.

    Raises:
        ValueError: ``data.val_fold`` is not ``all``, or a fold's plan fails (see :func:`plan_finetune`).
    """
    if cfg.data.val_fold != "all":
        raise ValueError("cross-validation needs data.val_fold=all")
    base = run_dir(cfg.run, f"{cfg.preset or 'finetune'}-{cfg.model.arch}-cv")
    folds = []
    for k in (k for k in range(cfg.data.folds) if k != cfg.data.test_fold):
        fold = cfg.model_copy(deep=True)
        fold.data.val_fold = k
        fold.run.name, fold.run.storage_path = f"{base.name}-fold{k}", base.storage
        fold.pretrained = cfg.pretrained.replace("{fold}", str(k))
        folds.append((k, fold, plan_finetune(fold)))
    return base, folds


def cross_validate(cfg: FinetuneConfig, folds: tuple | None = None) -> str:
    """``data.val_fold=all``: fine-tune one run per fold (every fold but ``test_fold`` validates once), one
    after another; return the folder with ``cv_summary.json`` / ``cv_summary.md``.

    Each fold's run is ``<run.name>-fold<k>`` next to the summary folder ``<run.name>``; re-running resumes
    the unfinished folds and keeps the finished ones. ``pretrained`` may contain ``{fold}``, e.g.
    ``pretrained=runs/pre-fold{fold}``, so that each fold fine-tunes an encoder self pre-trained on its own
    training split only (``jobs/pretrain.py data.val_fold=k``); a single encoder for all folds has seen
    every fold's validation cases unless it was pre-trained elsewhere. The summary lists the fold models for
    ``jobs/predict.py --model``.
    """
    base, folds = folds or plan_folds(cfg)
    results = []
    for k, fold, plan in folds:
        done = Path(plan.run.path) / RunDir.RESULT
        path = plan.run.path if done.is_file() else finetune(fold, plan=plan)
        result = json.loads((Path(path) / RunDir.RESULT).read_text())
        results.append({"fold": k, "run_dir": path, "model": str(Path(path)), "metric": result["metric"],
                        "val": result["val"].get(result["metric"]), "test": result["test"].get(result["metric"])})
    metric = results[0]["metric"]
    summary = {"metric": metric, "folds": results,
               **{f"{split}_mean": statistics.mean(r[split] for r in results if r[split] is not None) if any(
                   r[split] is not None for r in results) else None for split in ("val", "test")},
               **{f"{split}_sd": statistics.stdev([r[split] for r in results if r[split] is not None]) if sum(
                   r[split] is not None for r in results) > 1 else None for split in ("val", "test")},
               "models": ",".join(r["model"] for r in results)}
    files = RunFiles(f"{base.storage.rstrip('/')}/{base.name}")
    files.write_json(RunDir.CV_SUMMARY, _clean(summary))
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"# Cross-validation: {cfg.model.arch}, {len(results)} folds ({metric})", "",
             "| fold | validation | test | run |", "| --- | --- | --- | --- |",
             *[f"| {r['fold']} | {fmt(r['val'])} | {fmt(r['test'])} | `{r['run_dir']}` |" for r in results],
             f"| mean ± sd | {fmt(summary['val_mean'])} ± {fmt(summary['val_sd'])} | "
             f"{fmt(summary['test_mean'])} ± {fmt(summary['test_sd'])} | |", "",
             f"Ensemble: `python jobs/predict.py --model {summary['models']} --input SPEC --out DIR`"]
    (files.path(RunDir.CV_SUMMARY_MD)).write_text("\n".join(lines) + "\n")
    files.sync()
    log.info("cross-validation: %s %s ± %s over %d folds; %s", metric, fmt(summary["val_mean"]), fmt(summary["val_sd"]),
             len(results), files.uri(RunDir.CV_SUMMARY_MD))
    return files.run_dir
