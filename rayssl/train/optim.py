"""Optimiser, parameter groups and per-iteration learning-rate schedules."""

from __future__ import annotations

import math
from typing import Callable

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from rayssl.config import OptimConfig

# Fine-tuning only (``finetune.models``): token-like N-D parameters without weight decay, as the
# ``no_weight_decay_list`` of facebookresearch/mae ``util/lr_decay.py`` ``param_groups_lrd``.
NO_DECAY_PATTERNS = ("*cls_token", "*pos_embed", "*mask_token")


def effective_lr(optim: OptimConfig, total_batch: int) -> float:
    """``optim.lr`` if given, else the MAE linear scaling rule ``base_lr * total_batch / 256``."""
    return optim.lr if optim.lr is not None else optim.base_lr * total_batch / 256


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Pre-training groups: no decay for 1-D params and biases, decay for all else (cls / mask tokens too).

    As facebookresearch/mae ``main_pretrain.py`` (``optim_factory.add_weight_decay(model, wd)``, no skip
    list) and SelfMedMAE ``lib/trainers/base_trainer.py`` ``get_parameter_groups`` (``MAE3D`` has no
    ``no_weight_decay``); frozen params (the fixed sin-cos ``pos_embed``) are left out.
    """
    return param_groups_weight_decay(model, weight_decay)


def make_optimizer(optim: OptimConfig, lr: float) -> Callable[[list], torch.optim.Optimizer]:
    """A factory ``params -> torch optimizer`` (DeepSpeed calls it on the groups it manages)."""
    if optim.optimizer == "adamw":
        return lambda params: torch.optim.AdamW(params, lr=lr, betas=optim.betas)
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=optim.momentum)


def lr_factor(step: int, total_steps: int, warmup_steps: int, optim: OptimConfig, steps_per_epoch: int, base_lr: float) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then ``cosine`` decay to ``min_lr`` at ``total_steps``,
    ``step`` decay by ``step_gamma`` every ``step_epochs`` epochs, or ``constant``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "step":
        return optim.step_gamma ** ((step // max(1, steps_per_epoch)) // optim.step_epochs)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    floor = optim.min_lr / base_lr if base_lr > 0 else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, base_lr: float, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, optim, steps_per_epoch, base_lr)
    )
