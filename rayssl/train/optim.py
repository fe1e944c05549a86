"""Optimiser, parameter groups and per-iteration learning-rate schedules."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from rayssl.config import OptimConfig

NO_DECAY_TOKENS = ("cls_token", "pos_embed", "mask_token")
"""Token-like N-D parameters fine-tuning leaves undecayed: facebookresearch/mae ``main_finetune.py``
(``no_weight_decay_list`` of ``util/lr_decay.py param_groups_lrd``). Pre-training decays them."""


def effective_lr(optim: OptimConfig, total_batch: int) -> float:
    """``optim.lr`` if given, else the MAE linear scaling rule ``base_lr * total_batch / 256``."""
    return optim.lr if optim.lr is not None else optim.base_lr * total_batch / 256


# Kept over timm.optim.param_groups_layer_decay, which gives every parameter the same lr_scale and weight decay (checked
# on MAE, ViT, UNETR, ViT classifier and Genesis U-Net) but not the same groups: it reads layer ids only from a timm
# model's group_matcher() (else guesses them from parameter counts), puts a UNETR's / classifier's / MAE's decoder and
# head in one group with the encoder's final norm (one group fewer, so an optimizer state saved with today's groups
# would not load on resume), keeps no parameter names, and warns "Layer-wise lr decay has no effect" on every
# one-layer call (all of pre-training, the U-Nets).
def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0, no_decay: tuple[str, ...] = (),
                 lr: float | None = None) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: rayssl's one weight-decay and layer-decay rule.

    No weight decay on 1-D parameters (biases, norms) and on names ending in a ``no_decay`` entry. With a
    ViT encoder (the model itself or ``model.encoder``, which tells each parameter's ``layer_id``: embeddings
    0, block i i + 1, final norm depth + 1) and ``layer_decay`` < 1, its parameters get ``lr_scale =
    layer_decay ** (depth + 1 - layer_id)``; everything else (decoder, head, a U-Net) gets 1.

    * Pre-training, ``param_groups(model, wd)``: tokens decayed, as facebookresearch/mae ``main_pretrain.py``
      (``optim_factory.add_weight_decay``, no skip list) and SelfMedMAE ``lib/trainers/base_trainer.py``
      ``get_parameter_groups``. Frozen parameters (a fixed sin-cos ``pos_embed``) are left out.
    * Fine-tuning, ``param_groups(model, wd, layer_decay, NO_DECAY_TOKENS, lr)``: facebookresearch/mae
      ``util/lr_decay.py`` ``param_groups_lrd``.

    Returns:
        dicts with ``params``, ``names``, ``weight_decay``, ``lr_scale`` (and ``lr = lr * lr_scale`` when
        ``lr`` is given).
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay={layer_decay} must be in (0, 1]")
    encoder, prefix = (model, "") if hasattr(model, "layer_id") else (getattr(model, "encoder", None), "encoder.")
    layered = layer_decay < 1.0 and encoder is not None and hasattr(encoder, "layer_id")
    groups: dict[tuple[int | None, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith(no_decay)) if no_decay else p.ndim > 1
        layer = encoder.layer_id(name[len(prefix):]) if layered and name.startswith(prefix) else None
        scale = 1.0 if layer is None else layer_decay ** (encoder.depth + 1 - layer)
        g = groups.setdefault((layer, decay), {"params": [], "names": [], "lr_scale": scale,
                                               "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)
        g["names"].append(name)
    out = list(groups.values())
    if lr is not None:
        for g in out:
            g["lr"] = lr * g["lr_scale"]
    return out


def make_optimizer(optim: OptimConfig, lr: float) -> Callable[[list], torch.optim.Optimizer]:
    """A factory ``groups -> torch optimizer`` (DeepSpeed calls it on the groups it manages); the
    groups' ``names`` (for reports) stay out of the optimiser."""

    def build(groups: list) -> torch.optim.Optimizer:
        groups = [{k: v for k, v in g.items() if k != "names"} if isinstance(g, dict) else g for g in groups]
        on_gpu = any(p.is_cuda for g in groups for p in (g["params"] if isinstance(g, dict) else [g]))
        fused = True if on_gpu else None  # one kernel for all parameters on a GPU; torch's default elsewhere
        if optim.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=lr, betas=optim.betas, fused=fused)
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov, fused=fused)

    return build


def lr_factor(step: int, total_steps: int, warmup_steps: int, optim: OptimConfig, steps_per_epoch: int, base_lr: float) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup_steps``, then ``cosine`` decay to ``min_lr`` at ``total_steps``,
    ``step`` decay by ``step_gamma`` every ``step_epochs`` epochs, ``poly`` decay ``(1 - progress) ** 0.9`` to 0 (nnssl
    ``training/lr_scheduler/polylr.py``, exponent 0.9; stepped there once an epoch, here every step), or ``constant``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "step":
        return optim.step_gamma ** ((step // max(1, steps_per_epoch)) // optim.step_epochs)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if optim.schedule == "poly":
        return (1.0 - progress) ** 0.9
    floor = optim.min_lr / base_lr if base_lr > 0 else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, base_lr: float, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, optim, steps_per_epoch, base_lr)
    )
