"""The fine-tuning worker: the shared Ray Train worker loop (:mod:`rayssl.train.worker`) with validation on rank 0.

Every ``eval.val_every`` epochs (and after the last) rank 0 scores the validation split (whole-volume
sliding-window Dice on each case's own grid, or AUC), every rank reports ``val_metric`` with a checkpoint; the best weights so
far travel in each checkpoint (``best.safetensors``), so a resumed run keeps them and the driver tests them.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import ray.train
import torch
from safetensors.torch import save_file

from rayssl.config import FinetuneConfig
from rayssl.data.kept import KeptVolumes
from rayssl.finetune.augment import RandAugment2D, SegAugment
from rayssl.finetune.evaluate import evaluate_classification, evaluate_segmentation
from rayssl.finetune.models import build_model
from rayssl.finetune.task import TaskSpec, build_loss, load_eval_cases
from rayssl.finetune.weights import load_pretrained
from rayssl.models.weights_file import read_safetensors
from rayssl.train.checkpoint import resume_engine, save_checkpoint
from rayssl.train.engine import compile_model, deepspeed_config, full_state_dict, resolve_compile
from rayssl.train.layout import RunDir
from rayssl.train.optim import NO_DECAY_TOKENS, make_optimizer, make_scheduler, param_groups
from rayssl.train.worker import (Eta, LossWindow, TrainState, WorkerContext, broadcast, group_optim, steps_per_epoch,
                                 total_steps, train_epochs, volume_stream)

log = logging.getLogger(__name__)


def validation_metric(model, cases: list[dict], cfg: FinetuneConfig, spec: TaskSpec, device) -> dict:
    """``{"val_metric", "val_dice" | "val_auc"}`` on already loaded validation cases."""
    if spec.classification:
        res = evaluate_classification(model, cases, spec.class_names, cfg.batch_size * 4, device)
        return {"val_metric": res["mean_auc"], "val_auc": res["mean_auc"]}
    res = evaluate_segmentation(model, cases, spec.mode, spec.num_classes, spec.class_names,
                                cfg.sw_roi, cfg.eval.sw_overlap, cfg.eval.sw_batch_size,
                                hd95=False, device=device, source_grid=True)
    return {"val_metric": res["mean_dice"], "val_dice": res["mean_dice"], "val_foreground": res["foreground"]}


def train_loop_per_worker(config: dict) -> None:
    """Fine-tune. ``config``: ``{"cfg": FinetuneConfig dict, "plan": FinetunePlan}`` (see ``finetune``)."""
    cfg = FinetuneConfig.model_validate(config["cfg"])
    plan = config["plan"]
    spec = plan.spec
    ctx = WorkerContext.current(plan.run.path, cfg.scale)
    rows = volume_stream(plan.volumes, ctx.rank, ctx.world)  # a dataset shard starts reading while the engine builds

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg, spec.channels, spec.num_classes)
    load_pretrained(model, plan.pretrained)
    compile_model(model, resolve_compile(cfg.scale, ctx.device.type == "cuda"))
    loss_fn = build_loss(spec)
    optim, lr = group_optim(cfg.optim, cfg.scale, ctx.world, plan.lr)  # an elastic group keeps the global batch
    spe = steps_per_epoch(plan.training_cases(), plan.patches_per_case, ctx.world, cfg.batch_size, optim.grad_accum)
    steps = total_steps(spe, cfg.epochs, cfg.max_steps)

    state = TrainState()
    best: dict = {}  # rank 0: the best weights so far

    def read_best(ckpt_dir: Path) -> None:
        if ctx.rank == 0 and (ckpt_dir / RunDir.BEST).is_file():
            best["weights"] = read_safetensors(ckpt_dir / RunDir.BEST)

    engine, resumed = resume_engine(
        model, param_groups(model, cfg.optim.weight_decay, cfg.model.layer_decay, NO_DECAY_TOKENS, lr),
        make_optimizer(optim, lr), lambda opt: make_scheduler(opt, optim, lr, steps, spe),
        deepspeed_config(cfg.batch_size, optim, cfg.scale.zero_stage, ctx.precision, model),
        state, ctx.world, plan.run.path, on_checkpoint=read_best,
    )
    ctx.resumed(state, resumed, cfg.run.tracker, plan.run.name, config["cfg"])

    val_cases = (load_eval_cases(plan.val_cases, cfg, plan.recipe, spec.channels, source_labels=not spec.classification)
                 if ctx.rank == 0 else [])
    if cfg.augment:
        seed = ctx.seed(cfg.seed, state.step)
        augment = RandAugment2D(seed) if spec.classification else SegAugment(cfg.data.roi, seed)
    else:
        augment = None
    window, eta = LossWindow(), Eta(state.step, steps)
    validated_at = [state.step]

    def step(batch: dict) -> tuple[torch.Tensor, int]:
        x, y = batch["image"].float(), batch[spec.target_key]
        if augment is not None:
            x, y = augment(x, y)
        x, y = x.to(ctx.device), y.to(ctx.device)
        logits = engine(x.to(ctx.dtype)).float()
        loss = loss_fn(logits, y.float() if spec.classification else y.long())
        engine.backward(loss)
        engine.step()
        return loss, x.shape[0]

    def validate_and_report() -> None:
        validated_at[0] = state.step
        train_loss, samples_per_s = window.mean(), window.samples_per_s(ctx.world)
        with torch.compiler.set_stance("force_eager"):  # sliding windows: other batch sizes, eval mode
            metrics = validation_metric(engine.module, val_cases, cfg, spec, ctx.device) if ctx.rank == 0 else None
        metrics = broadcast(metrics)
        value = metrics["val_metric"]
        improved = value == value and (state.best_metric is None or value > state.best_metric)
        if improved:
            state.best_metric, state.best_epoch = value, state.epoch
            weights = full_state_dict(engine, keep=ctx.rank == 0)  # collective under ZeRO-3
            if ctx.rank == 0:
                best["weights"] = weights
        metrics.update(epoch=state.epoch, step=state.step, train_loss=train_loss, lr=engine.get_lr()[0],
                       best_val_metric=state.best_metric, best_epoch=state.best_epoch,
                       samples_per_s=samples_per_s, world_size=ctx.world, resumes=state.resumes)
        ctx.log_metrics(metrics)
        if ctx.files:
            log.info("epoch %d step %d/%d loss %.4f %.1f samples/s val %.4f (best %.4f at epoch %s) %s", state.epoch,
                     state.step, steps, train_loss, samples_per_s, value,
                     state.best_metric if state.best_metric is not None else float("nan"), state.best_epoch, eta(state.step))
        with tempfile.TemporaryDirectory() as tmp:
            if ctx.rank == 0 and "weights" in best:
                save_file(best["weights"], str(Path(tmp) / RunDir.BEST))
            save_checkpoint(engine, tmp, state.as_dict(), ctx.rank, ctx.world)
            if ctx.files:
                ctx.files.sync()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def after_epoch() -> None:  # the reported loss and speed are the last epoch's
        if state.epoch % cfg.eval.val_every == 0 or state.epoch >= cfg.epochs or state.step >= steps:
            validate_and_report()
        window.reset()

    engine.train()
    train_epochs(state, rows, cfg.data, epochs=cfg.epochs, steps=steps, batch_size=cfg.batch_size,
                 grad_accum=optim.grad_accum, columns=["image", spec.target_key], shuffle_seed=ctx.rank,
                 world=ctx.world, step=step, window=window, after_epoch=after_epoch,
                 device=None if spec.classification and augment is not None else ctx.device,  # RandAugment: PIL, CPU
                 kept=isinstance(plan.volumes, KeptVolumes))
    if validated_at[0] != state.step:  # stopped by max_steps inside an epoch
        validate_and_report()
    ctx.close()
