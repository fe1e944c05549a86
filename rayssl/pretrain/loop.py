"""The pre-training worker: MAE or Models Genesis on the shared Ray Train worker loop (:mod:`rayssl.train.worker`)."""

from __future__ import annotations

import importlib
import logging
import tempfile

import ray.train
import torch

from rayssl.config import PretrainConfig
from rayssl.data.kept import KeptVolumes
from rayssl.pretrain.methods import build_model, build_objective
from rayssl.pretrain.preview import save_preview
from rayssl.train.checkpoint import resume_engine, save_checkpoint
from rayssl.train.engine import compile_model, deepspeed_config, ensure_cpu_accelerator, resolve_compile
from rayssl.train.layout import RunDir
from rayssl.train.optim import make_optimizer, make_scheduler, param_groups
from rayssl.train.worker import (Eta, LossWindow, TrainState, WorkerContext, all_gather, peak_memory_mb,
                                 group_optim, steps_per_epoch, total_steps, train_epochs, volume_stream)

log = logging.getLogger(__name__)


def train_loop_per_worker(config: dict) -> None:
    """Pre-train. ``config``: ``{"cfg": PretrainConfig dict, "plan": PretrainPlan}`` (see ``pretrain``)."""
    cfg = PretrainConfig.model_validate(config["cfg"])
    plan = config["plan"]
    ctx = WorkerContext.current(plan.run.path, cfg.scale)
    rows = volume_stream(plan.volumes, ctx.rank, ctx.world)  # a dataset shard starts reading while the engine builds
    ensure_cpu_accelerator()
    import deepspeed  # noqa: F401  (imported in the worker, before the memory baseline)

    model_module = {"mae": "mae", "genesis": "genesis_unet", "cnn_mae": "resenc_unet"}[cfg.model.method]  # timm or MONAI
    importlib.import_module(f"rayssl.models.{model_module}")
    base_mem = peak_memory_mb(ctx.device)  # the process before the model: libraries, Ray, DeepSpeed

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    compile_mode = resolve_compile(cfg.scale, ctx.device.type == "cuda")
    model = compile_model(build_model(cfg, plan.channels), compile_mode)
    objective = build_objective(cfg)
    optim, lr = group_optim(cfg.optim, cfg.scale, ctx.world, plan.lr)  # an elastic group keeps the global batch
    spe = steps_per_epoch(plan.training_cases(), plan.patches_per_case, ctx.world, cfg.batch_size, optim.grad_accum)
    steps = total_steps(spe, cfg.epochs, cfg.max_steps)

    state = TrainState()
    engine, resumed = resume_engine(
        model,
        param_groups(model, cfg.optim.weight_decay),
        make_optimizer(optim, lr),
        lambda opt: make_scheduler(opt, optim, lr, steps, spe),
        deepspeed_config(cfg.batch_size, optim, cfg.scale.zero_stage, ctx.precision, model),
        state,
        ctx.world,
        plan.run.path,
    )
    ctx.resumed(state, resumed, cfg.run.tracker, plan.run.name, config["cfg"])
    if ctx.files:
        log.info("%s engine built on %s (%s, ZeRO-%d, compile %s); training", cfg.model.method, ctx.device,
                 ctx.precision, cfg.scale.zero_stage, compile_mode)

    generator = ctx.generator(cfg.seed, state.step)
    window, eta = LossWindow(), Eta(state.step, steps)
    preview_batch: list[torch.Tensor] = []
    last_loss = [float("nan")]

    def step(batch: dict) -> tuple[torch.Tensor, int]:
        x = batch["image"].to(device=ctx.device, dtype=torch.float32)  # on the device already: on_device
        if not preview_batch:
            preview_batch.append(x[:2].clone())
        loss = objective.loss(engine, x, generator, ctx.dtype)
        engine.backward(loss)
        engine.step()
        return loss, x.shape[0]

    def report(with_checkpoint: bool) -> None:
        peak = peak_memory_mb(ctx.device)
        mems, train_mems = all_gather(peak), all_gather(peak - base_mem)
        metrics = {
            "step": state.step, "epoch": state.epoch, "loss": window.mean(), "lr": engine.get_lr()[0],
            "samples_per_s": window.samples_per_s(ctx.world), "samples": state.samples, "world_size": ctx.world,
            "resumes": state.resumes, "peak_mem_mb_max": max(mems), "train_mem_mb_max": max(train_mems),
            **{f"peak_mem_mb_rank{i}": m for i, m in enumerate(mems)},
        }
        last_loss[0] = metrics["loss"]
        ctx.log_metrics(metrics)
        if ctx.files:
            log.info("epoch %d step %d/%d loss %.5f lr %.2e %.1f samples/s mem %.0f MB %s", state.epoch, state.step,
                     steps, metrics["loss"], metrics["lr"], metrics["samples_per_s"], max(mems), eta(state.step))
        if with_checkpoint:
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(engine, tmp, state.as_dict(), ctx.rank, ctx.world)
                if ctx.files:
                    ctx.files.sync()
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
        window.reset()

    def preview(tag: str) -> None:
        if not preview_batch:
            return
        engine.module.eval()
        with torch.compiler.set_stance("force_eager"):  # another batch size and mode: no recompile for one preview
            rows = objective.preview(engine.module, preview_batch[0], torch.Generator(device=ctx.device).manual_seed(0),
                                     ctx.dtype)
        engine.module.train()
        if ctx.files:
            save_preview(rows, ctx.files.path(f"{RunDir.PREVIEWS}/{tag}.png"),
                         f"{cfg.model.method} {tag} loss {last_loss[0]:.4f}")

    def after_step() -> None:
        if state.step % cfg.run.checkpoint_every == 0:
            report(with_checkpoint=True)
        elif state.step % cfg.run.log_every == 0 or state.step == 1:  # the first step shows the run is going
            report(with_checkpoint=False)

    def after_epoch() -> None:
        finished = state.step >= steps or state.epoch >= cfg.epochs  # the final preview follows
        if cfg.run.preview_every and state.epoch % cfg.run.preview_every == 0 and not finished:
            preview(f"epoch{state.epoch:04d}")

    engine.train()
    train_epochs(state, rows, cfg.data, epochs=cfg.epochs,
                 steps=steps, batch_size=cfg.batch_size, grad_accum=optim.grad_accum, columns=["image"],
                 shuffle_seed=ctx.rank, world=ctx.world, step=step, window=window, after_step=after_step,
                 after_epoch=after_epoch, device=ctx.device, kept=isinstance(plan.volumes, KeptVolumes))
    preview("final")
    report(with_checkpoint=True)
    ctx.close()
