"""``finetune(cfg)``: the driver side of fine-tuning (a Ray Train ``TorchTrainer``), then test evaluation."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import ray.train
import torch
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file

from rayssl.config import FinetuneConfig, dump_config
from rayssl.data.crops import patches_per_case
from rayssl.finetune.evaluate import evaluate_classification, evaluate_segmentation, save_overlay, write_csv, write_nifti
from rayssl.finetune.loop import BEST_FILE, train_loop_per_worker
from rayssl.finetune.models import build_model
from rayssl.finetune.task import case_dicts, load_eval_cases, task_spec
from rayssl.finetune.weights import load_pretrained, resolve_pretrained
from rayssl.train.artifacts import RunFiles, is_uri
from rayssl.train.optim import effective_lr
from rayssl.train.pretrain import check_cases_per_worker, scaling_config


def default_run_name(cfg: FinetuneConfig) -> str:
    tag = "scratch" if resolve_pretrained(cfg.pretrained) is None else "pretrained"
    return f"{cfg.preset or 'finetune'}-{cfg.model.arch}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"


def _max_workers(cfg: FinetuneConfig) -> int:
    w = cfg.scale.num_workers
    return w[1] if isinstance(w, tuple) else w


def plan_run(cfg: FinetuneConfig, run_dir: str) -> dict:
    """Everything the workers need, checked on the driver before any worker starts.

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
    if spec["mode"] != "multilabel" and any(c.label is None for c in train + val + test):
        raise ValueError(f"data.source={cfg.data.source!r}: segmentation needs a label for every case")
    check_cases_per_worker(len(train), _max_workers(cfg), cfg.data.source)
    pretrained = resolve_pretrained(cfg.pretrained)
    report = load_pretrained(build_model(cfg, spec["channels"], spec["num_classes"]), cfg.pretrained)
    total_batch = cfg.batch_size * cfg.optim.grad_accum * _max_workers(cfg)
    return {
        "run_dir": run_dir, "spec": spec, "recipe": recipe,
        "pretrained": str(pretrained) if pretrained else "none", "load_report": report,
        "num_cases": len(train), "patches_per_case": patches_per_case(cfg.data), "lr": effective_lr(cfg.optim, total_batch),
        "val_cases": case_dicts(val), "test_cases": case_dicts(test), "n_train": len(train),
        "target_key": "target" if spec["mode"] == "multilabel" else "label",
    }


def _evaluate(model, cfg: FinetuneConfig, plan: dict, split: str, files: RunFiles, export: bool) -> dict:
    spec = plan["spec"]
    cases = plan[f"{split}_cases"]
    if not cases:
        return {}
    volumes = load_eval_cases(cases, cfg, plan["recipe"])
    if spec["mode"] == "multilabel":
        res = evaluate_classification(model, volumes, spec["class_names"], cfg.batch_size * 4)
    else:
        keep = max(cfg.eval.save_predictions, cfg.eval.overlays) if export else 0
        res = evaluate_segmentation(model, volumes, spec["mode"], spec["num_classes"], spec["class_names"],
                                    cfg.eval.roi or cfg.data.roi, cfg.eval.sw_overlap, cfg.eval.sw_batch_size,
                                    hd95=cfg.eval.hd95, keep=keep)
        by_id = {v["case_id"]: v for v in volumes}
        for i, (case_id, pred) in enumerate(res.pop("predictions").items()):
            vol = by_id[case_id]
            if i < cfg.eval.save_predictions:
                write_nifti(pred, vol["affine"], files.path(f"predictions/{case_id}.nii.gz"))
            if i < cfg.eval.overlays:
                row = next(r for r in res["rows"] if r["case_id"] == case_id)
                save_overlay(vol["image"], vol["label"], pred, files.path(f"overlays/{case_id}.png"),
                             f"{case_id}: mean Dice {row['mean_dice']:.3f}")
    write_csv(res.pop("rows"), files.path(f"cases_{split}.csv"))
    res.pop("predictions", None)
    return res


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def finetune(cfg: FinetuneConfig, callbacks: list | None = None) -> str:
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
    """
    name = cfg.run.name or default_run_name(cfg)
    storage = cfg.run.storage_path if is_uri(cfg.run.storage_path) else str(Path(cfg.run.storage_path).resolve())
    run_dir = f"{storage.rstrip('/')}/{name}"
    plan = plan_run(cfg, run_dir)
    files = RunFiles(run_dir)
    files.write_json("config.json", dump_config(cfg))
    files.write_json("plan_cases.json", {"val": plan["val_cases"], "test": plan["test_cases"]})
    spec, report = plan["spec"], plan["load_report"]
    print(f"[rayssl] fine-tuning {cfg.model.arch} ({spec['mode']}, {spec['num_classes']} outputs) on {cfg.data.source}: "
          f"{plan['n_train']} train / {len(plan['val_cases'])} val / {len(plan['test_cases'])} test cases, "
          f"lr {plan['lr']:.3g}, pretrained {report['source'] or 'none'} ({len(report['loaded'])} tensors loaded, "
          f"{len(report['new'])} new), run dir {run_dir}", flush=True)

    from rayssl.data.pipeline import train_volumes

    ds = train_volumes(cfg.data, ["image", plan["target_key"]], "train")
    worker_plan = {k: v for k, v in plan.items() if k not in ("load_report", "test_cases")}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": dump_config(cfg), "plan": worker_plan},
        scaling_config=scaling_config(cfg),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            callbacks=callbacks,
        ),
        datasets={"train": ds},
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if result.error:
        raise result.error
    last = result.metrics or {}

    model = build_model(cfg, spec["channels"], spec["num_classes"])
    with result.checkpoint.as_directory() as ckpt:
        best = Path(ckpt) / BEST_FILE
        weights = load_file(str(best if best.is_file() else Path(ckpt) / "model.safetensors"))
    model.load_state_dict(weights)
    from safetensors.torch import save_file

    save_file(weights, str(files.path(BEST_FILE)))
    with torch.no_grad():
        val = _evaluate(model, cfg, plan, "val", files, export=False)
        test = _evaluate(model, cfg, plan, "test", files, export=True)
    metric = "mean_auc" if spec["mode"] == "multilabel" else "mean_dice"
    summary = _clean({
        "task": {"arch": cfg.model.arch, "mode": spec["mode"], "num_classes": spec["num_classes"],
                 "class_names": spec["class_names"], "source": cfg.data.source},
        "metric": metric,
        "val": val, "test": test,
        "pretrained": {"source": report["source"], "method": report["method"], "loaded": len(report["loaded"]),
                       "new": len(report["new"]), "pos_embed_interpolated": report["pos_embed_interpolated"]},
        "best_epoch": last.get("best_epoch"), "best_val_metric": last.get("best_val_metric"),
        "epochs": last.get("epoch"), "steps": last.get("step"), "final_train_loss": last.get("train_loss"),
        "wall_time_s": wall, "world_size": last.get("world_size"),
        "checkpoint": result.checkpoint.path, "run_dir": run_dir, "config": dump_config(cfg),
    })
    files.write_json("result.json", summary)
    files.write_json("pretrained_load.json", _clean(report))
    files.sync()
    print(json.dumps({"val_" + metric: summary["val"].get(metric), "test_" + metric: summary["test"].get(metric),
                      "pretrained": report["source"] or "none"}), flush=True)
    return run_dir
