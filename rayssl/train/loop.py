"""The Ray Train loop: one DeepSpeed engine per worker, data from ``get_dataset_shard``."""

from __future__ import annotations

import resource
import tempfile
import time

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from rayssl.config import PretrainConfig
from rayssl.data.crops import epoch_batches
from rayssl.train.artifacts import RunFiles
from rayssl.train.checkpoint import resume_engine, save_checkpoint
from rayssl.train.engine import deepspeed_config, ensure_cpu_accelerator, resolve_precision
from rayssl.train.methods import build_model, build_objective
from rayssl.train.optim import make_optimizer, make_scheduler, param_groups
from rayssl.train.preview import save_preview


def steps_per_epoch(num_cases: int, patches_per_case: int, world_size: int, batch_size: int, grad_accum: int) -> int:
    """Optimiser steps per epoch when every worker gets an equal share of the cases (Ray Train's
    ``streaming_split(equal=True)``), cuts ``patches_per_case`` crops of each and drops the last batch."""
    return max(1, (num_cases // world_size) * patches_per_case // batch_size // grad_accum)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def all_mean(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t)


def _all_gather(value: float) -> list[float]:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return [float(v) for v in out]


def train_loop_per_worker(config: dict) -> None:
    """Pre-train with MAE or Models Genesis. ``config``: ``{"cfg": PretrainConfig dict, "plan": dict}``."""
    cfg = PretrainConfig.model_validate(config["cfg"])
    plan = config["plan"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    precision = resolve_precision(cfg.scale, device.type == "cuda")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    files = RunFiles(plan["run_dir"], pull_metrics=True) if rank == 0 else None
    ensure_cpu_accelerator()
    import deepspeed  # noqa: F401  (imported in the worker, before the memory baseline)
    import rayssl.models.genesis_unet, rayssl.models.mae  # noqa: F401, E401  (timm, MONAI: also before it)

    base_mem = peak_memory_mb(device)  # the process before the model: libraries, Ray, DeepSpeed

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, plan["channels"])
    objective = build_objective(cfg)
    spe = steps_per_epoch(plan["num_cases"], plan["patches_per_case"], world, cfg.batch_size, cfg.optim.grad_accum)
    total_steps = min(spe * cfg.epochs, cfg.max_steps or 10**12)
    lr = plan["lr"]

    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "samples": 0}
    engine, resumed = resume_engine(
        model,
        param_groups(model, cfg.optim.weight_decay),
        make_optimizer(cfg.optim, lr),
        lambda opt: make_scheduler(opt, cfg.optim, lr, total_steps, spe),
        deepspeed_config(cfg.batch_size, cfg.optim, cfg.scale.zero_stage, precision, model),
        state,
        world,
    )
    if resumed and rank == 0:
        print(f"[rayssl] resumed at step {state['step']} epoch {state['epoch']} ({resumed})", flush=True)

    shard = ray.train.get_dataset_shard("train")
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank + state["step"])
    preview_batch = None
    window_loss, window_n, window_t0, window_samples = 0.0, 0, time.perf_counter(), 0
    last_metrics: dict = {}
    micro = 0
    done = state["step"] >= total_steps

    def report(with_checkpoint: bool) -> None:
        nonlocal window_loss, window_n, window_t0, window_samples, last_metrics
        elapsed = time.perf_counter() - window_t0
        peak = peak_memory_mb(device)
        mems, train_mems = _all_gather(peak), _all_gather(peak - base_mem)
        metrics = {
            "step": state["step"],
            "epoch": state["epoch"],
            "loss": all_mean(window_loss / max(1, window_n)),
            "lr": engine.get_lr()[0],
            "samples_per_s": window_samples * world / max(elapsed, 1e-9),
            "samples": state["samples"],
            "world_size": world,
            "resumes": state.get("resumes", 0),
            "peak_mem_mb_max": max(mems),
            "train_mem_mb_max": max(train_mems),
            **{f"peak_mem_mb_rank{i}": m for i, m in enumerate(mems)},
        }
        if files:
            files.log_metrics({"time": time.time(), **metrics})
            print(
                f"[rayssl] epoch {state['epoch']} step {state['step']}/{total_steps} loss {metrics['loss']:.5f} "
                f"lr {metrics['lr']:.2e} {metrics['samples_per_s']:.1f} samples/s mem {max(mems):.0f} MB",
                flush=True,
            )
        if with_checkpoint:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(engine, tmp, state, rank, world)
                if files:
                    files.sync()
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        last_metrics = metrics
        window_loss, window_n, window_t0, window_samples = 0.0, 0, time.perf_counter(), 0

    def preview(tag: str) -> None:
        if preview_batch is None:
            return
        engine.module.eval()
        rows = objective.preview(engine.module, preview_batch, torch.Generator(device=device).manual_seed(0), dtype)
        engine.module.train()
        if files:
            loss = last_metrics.get("loss", float("nan"))
            save_preview(rows, files.path(f"previews/{tag}.png"), f"{cfg.model.method} {tag} loss {loss:.4f}")

    engine.train()
    while not done and state["epoch"] < cfg.epochs:
        skip = state["batch_in_epoch"]
        batches = epoch_batches(shard.iter_rows(), cfg.data, state["epoch"], cfg.batch_size, ["image"], rank)
        for i, batch in enumerate(batches):
            if i < skip:  # resume inside an epoch: skip what was already trained on (the same crops)
                continue
            x = batch["image"].to(device=device, dtype=torch.float32)
            if preview_batch is None:
                preview_batch = x[:2].clone()
            loss = objective.loss(engine, x, generator, dtype)
            engine.backward(loss)
            engine.step()
            micro += 1
            state["batch_in_epoch"] = i + 1
            state["samples"] += x.shape[0] * world
            window_loss, window_n, window_samples = window_loss + float(loss), window_n + 1, window_samples + x.shape[0]
            if micro % cfg.optim.grad_accum:
                continue
            state["step"] += 1
            done = state["step"] >= total_steps
            if state["step"] % cfg.run.checkpoint_every == 0 and not done:
                report(with_checkpoint=True)
            elif state["step"] % cfg.run.log_every == 0 and not done:
                report(with_checkpoint=False)
            if done:
                break
        if not done:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            if cfg.run.preview_every and state["epoch"] % cfg.run.preview_every == 0:
                preview(f"epoch{state['epoch']:04d}")
            done = state["epoch"] >= cfg.epochs
    preview("final")
    report(with_checkpoint=True)
