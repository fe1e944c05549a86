"""The fine-tuning Ray Train loop: one DeepSpeed engine per worker (as in pre-training), validation on rank 0.

Every ``eval.val_every`` epochs (and after the last) rank 0 scores the validation split (whole-volume
sliding-window Dice, or AUC), every rank reports ``val_metric`` with a checkpoint; the best weights so
far travel in each checkpoint (``best.safetensors``), so a resumed run keeps them and the driver tests them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from rayssl.config import FinetuneConfig
from rayssl.data.crops import epoch_batches
from rayssl.finetune.augment import RandAugment2D, SegAugment
from rayssl.finetune.evaluate import evaluate_classification, evaluate_segmentation
from rayssl.finetune.models import build_model, lrd_param_groups
from rayssl.finetune.task import build_loss, load_eval_cases
from rayssl.finetune.weights import load_pretrained
from rayssl.train.artifacts import RunFiles
from rayssl.train.checkpoint import resume_engine, save_checkpoint
from rayssl.train.engine import deepspeed_config, full_state_dict, resolve_precision
from rayssl.train.loop import all_mean, steps_per_epoch
from rayssl.train.optim import make_optimizer, make_scheduler

BEST_FILE = "best.safetensors"


def validation_metric(model, cases: list[dict], cfg: FinetuneConfig, spec: dict, device) -> dict:
    """``{"val_metric", "val_dice" | "val_auc"}`` on already loaded validation cases."""
    if spec["mode"] == "multilabel":
        res = evaluate_classification(model, cases, spec["class_names"], cfg.batch_size * 4, device)
        return {"val_metric": res["mean_auc"], "val_auc": res["mean_auc"]}
    res = evaluate_segmentation(model, cases, spec["mode"], spec["num_classes"], spec["class_names"],
                                cfg.eval.roi or cfg.data.roi, cfg.eval.sw_overlap, cfg.eval.sw_batch_size,
                                hd95=False, device=device)
    return {"val_metric": res["mean_dice"], "val_dice": res["mean_dice"]}


def _broadcast(obj):
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def train_loop_per_worker(config: dict) -> None:
    """Fine-tune. ``config``: ``{"cfg": FinetuneConfig dict, "plan": dict}`` (see ``finetune``)."""
    cfg = FinetuneConfig.model_validate(config["cfg"])
    plan, spec = config["plan"], config["plan"]["spec"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    precision = resolve_precision(cfg.scale, device.type == "cuda")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    files = RunFiles(plan["run_dir"], pull_metrics=True) if rank == 0 else None

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, spec["channels"], spec["num_classes"])
    load_pretrained(model, plan["pretrained"])
    loss_fn = build_loss(spec)
    spe = steps_per_epoch(plan["num_cases"], plan["patches_per_case"], world, cfg.batch_size, cfg.optim.grad_accum)
    total_steps = min(spe * cfg.epochs, cfg.max_steps or 10**12)
    lr = plan["lr"]
    groups = [{k: v for k, v in g.items() if k != "names"}
              for g in lrd_param_groups(model, lr, cfg.optim.weight_decay, cfg.model.layer_decay)]

    state = {"step": 0, "epoch": 0, "best_metric": None, "best_epoch": None}
    best_weights = None

    def read_best(ckpt_dir: Path) -> None:
        nonlocal best_weights
        if rank == 0 and (ckpt_dir / BEST_FILE).is_file():
            best_weights = load_file(str(ckpt_dir / BEST_FILE))

    engine, resumed = resume_engine(
        model, groups, make_optimizer(cfg.optim, lr),
        lambda opt: make_scheduler(opt, cfg.optim, lr, total_steps, spe),
        deepspeed_config(cfg.batch_size, cfg.optim, cfg.scale.zero_stage, precision, model),
        state, world, on_checkpoint=read_best,
    )
    if resumed and rank == 0:
        print(f"[rayssl] fine-tuning resumed at epoch {state['epoch']} step {state['step']} ({resumed})", flush=True)

    val_cases = load_eval_cases(plan["val_cases"], cfg, plan["recipe"]) if rank == 0 else []
    if cfg.augment:
        seed = cfg.seed * 1000 + rank + state["step"]
        augment = SegAugment(cfg.data.roi, seed) if spec["mode"] != "multilabel" else RandAugment2D(seed)
    else:
        augment = None
    target_key = plan["target_key"]
    shard = ray.train.get_dataset_shard("train")
    micro, done = 0, state["step"] >= total_steps

    def validate_and_report(train_loss: float, elapsed: float, samples: int) -> None:
        nonlocal best_weights
        metrics = validation_metric(engine.module, val_cases, cfg, spec, device) if rank == 0 else None
        metrics = _broadcast(metrics)
        value = metrics["val_metric"]
        improved = value == value and (state["best_metric"] is None or value > state["best_metric"])
        if improved:
            state["best_metric"], state["best_epoch"] = value, state["epoch"]
            weights = full_state_dict(engine, keep=rank == 0)  # collective under ZeRO-3
            best_weights = weights if rank == 0 else None
        metrics.update(epoch=state["epoch"], step=state["step"], train_loss=train_loss, lr=engine.get_lr()[0],
                       best_val_metric=state["best_metric"], best_epoch=state["best_epoch"],
                       samples_per_s=samples * world / max(elapsed, 1e-9), world_size=world,
                       resumes=state.get("resumes", 0))
        if files:
            files.log_metrics({"time": time.time(), **metrics})
            print(f"[rayssl] epoch {state['epoch']} step {state['step']}/{total_steps} loss {train_loss:.4f} "
                  f"val {value:.4f} (best {state['best_metric']} at epoch {state['best_epoch']})", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(engine, tmp, state, rank, world)
            if rank == 0 and best_weights is not None:
                save_file(best_weights, str(Path(tmp) / BEST_FILE))
            if files:
                files.sync()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    engine.train()
    while not done and state["epoch"] < cfg.epochs:
        t0, losses, samples = time.perf_counter(), [], 0
        for batch in epoch_batches(shard.iter_rows(), cfg.data, state["epoch"], cfg.batch_size, ["image", target_key], rank):
            x, y = batch["image"].float(), batch[target_key]
            if augment is not None:
                x, y = augment(x, y)
            x, y = x.to(device), y.to(device)
            logits = engine(x.to(dtype)).float()
            loss = loss_fn(logits, y.float() if spec["mode"] == "multilabel" else y.long())
            engine.backward(loss)
            engine.step()
            losses.append(float(loss))
            samples += x.shape[0]
            micro += 1
            if micro % cfg.optim.grad_accum == 0:
                state["step"] += 1
                if state["step"] >= total_steps:
                    done = True
                    break
        state["epoch"] += 1
        done = done or state["epoch"] >= cfg.epochs
        if done or state["epoch"] % cfg.eval.val_every == 0:
            train_loss = all_mean(sum(losses) / max(1, len(losses)))
            validate_and_report(train_loss, time.perf_counter() - t0, samples)
