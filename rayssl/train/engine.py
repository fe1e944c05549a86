"""One DeepSpeed engine per Ray Train worker.

DeepSpeed is imported inside the functions: it must be imported in the worker process, after Ray
Train has created the process group it reuses (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from rayssl.config import OptimConfig, ScaleConfig


def resolve_precision(scale: ScaleConfig, on_gpu: bool) -> str:
    """``bf16`` on GPU and ``fp32`` on CPU unless the config forces one."""
    if scale.precision == "auto":
        return "bf16" if on_gpu else "fp32"
    if scale.precision == "bf16" and not on_gpu:
        raise ValueError("scale.precision=bf16 needs a GPU; use fp32 or auto on CPU")
    return scale.precision


def deepspeed_config(batch_size: int, optim: OptimConfig, zero_stage: int, precision: str) -> dict:
    """The DeepSpeed JSON config. The optimiser and schedule are passed in as torch objects."""
    zero: dict = {"stage": zero_stage}
    if zero_stage == 3:
        # Gather full weights on save so the consolidated checkpoint needs no offline conversion.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": optim.grad_accum,
        "gradient_clipping": optim.grad_clip or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        # A torch optimizer under ZeRO is supported but flagged "untested" by DeepSpeed.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def ensure_cpu_accelerator() -> None:
    """DeepSpeed must be told to use its CPU accelerator when no GPU is present."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def build_engine(
    model: nn.Module,
    groups: list[dict],
    optimizer_factory: Callable,
    scheduler_factory: Callable,
    config: dict,
):
    """``deepspeed.initialize`` on an already-created torch process group."""
    ensure_cpu_accelerator()
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        optimizer=optimizer_factory,
        lr_scheduler=scheduler_factory,
        config=config,
        dist_init_required=False,
    )
    return engine


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full fp32 weights on every rank, gathered from ZeRO-3 partitions when needed (collective)."""
    module = engine.module
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
    return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
