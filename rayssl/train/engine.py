"""One DeepSpeed engine per Ray Train worker.

DeepSpeed is imported inside the functions: it must be imported in the worker process, after Ray
Train has created the process group it reuses (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import os
import re
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


def resolve_compile(scale: ScaleConfig, on_gpu: bool) -> str:
    """The ``torch.compile`` mode of a run: ``scale.compile``, where ``auto`` is ``default`` on GPU (ZeRO 0-2)
    and ``off`` on CPU, where compiling costs a minute per network and the step is not launch-bound."""
    if scale.compile != "auto":
        return scale.compile
    return "default" if on_gpu and scale.zero_stage < 3 else "off"


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """Compile ``model`` in place (``nn.Module.compile``: its state-dict names stay), as one graph
    (``fullgraph=True``: a graph break is an error, not a silent slowdown); ``mode`` ``off`` leaves it eager."""
    if mode != "off":
        model.compile(fullgraph=True, mode=mode)
    return model


def zero_buffer_sizes(model: nn.Module, zero_stage: int) -> dict:
    """ZeRO bucket and live-parameter limits scaled to the model's largest layer.

    DeepSpeed's defaults (500M-element buckets, 1e9 live parameters) suit billion-parameter models;
    on a ViT-B they mean a reduce bucket far larger than the model and, under ZeRO-3, every gathered
    weight staying live from forward to backward. Here buckets hold about one layer, and ZeRO-3 keeps
    at most four layers gathered and steps the optimiser on sub-groups of four layers.
    """
    if zero_stage == 0:
        return {}
    layer = max(10**6, max(p.numel() for p in model.parameters()))
    sizes = {"reduce_bucket_size": layer, "allgather_bucket_size": layer}
    if zero_stage == 3:
        sizes.update(
            stage3_prefetch_bucket_size=layer,
            stage3_max_live_parameters=4 * layer,
            stage3_max_reuse_distance=4 * layer,
            sub_group_size=4 * layer,
        )
    return sizes


def deepspeed_config(batch_size: int, optim: OptimConfig, zero_stage: int, precision: str, model: nn.Module) -> dict:
    """The DeepSpeed JSON config. The optimiser and schedule are passed in as torch objects."""
    zero: dict = {"stage": zero_stage, **zero_buffer_sizes(model, zero_stage)}
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


def skip_shared_memory_comm() -> None:
    """One worker on CPU has nobody to all-reduce with: keep DeepSpeed from building (about half a minute on
    a new machine) and loading its shared-memory communication op for it."""
    import torch.distributed as dist

    if torch.cuda.is_available() or (dist.is_initialized() and dist.get_world_size() > 1):
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


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

    skip_shared_memory_comm()

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups,
        optimizer=optimizer_factory,
        lr_scheduler=scheduler_factory,
        config=config,
        dist_init_required=False,
    )
    load_checkpoints_safely(engine)
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1:
        # one worker has nothing to average; DeepSpeed would still flatten and copy every gradient
        engine.enable_backward_allreduce = False
    share_fp32_master_partitions(engine.optimizer)
    return engine


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holds more than tensors and plain data; it was not loaded."""


def _deepspeed_data_types() -> list[type]:
    """The classes DeepSpeed's own checkpoints hold besides tensors and builtins: plain data (the loss-scale
    settings, the ZeRO stage, the address of a flat-partition fragment), safe to rebuild from their fields."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def load_checkpoints_safely(engine) -> None:
    """Make ``engine`` read its checkpoint files with ``torch.load(weights_only=True)``.

    DeepSpeed's checkpoint engine loads them with ``weights_only=False``, so resuming from a checkpoint
    folder someone else can write to would run any pickle planted there. Here only tensors, builtins and
    the DeepSpeed data types above are rebuilt; anything else stops the load with
    :class:`UnsafeCheckpointError` naming the file and what it holds.
    """
    import pickle

    allowed = _deepspeed_data_types()

    def load(path, map_location=None):
        from rayssl.models.weights_file import check_weights_file

        check_weights_file(path, limit=float("inf"))  # a zip bomb in place of a shard (its size is not capped)
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL (\S+)", str(e))
            what = f"a reference to {found.group(1)}" if found else str(e).splitlines()[0]
            raise UnsafeCheckpointError(f"checkpoint file {path} was not loaded: besides tensors and plain data it holds "
                                        f"{what}, which unpickling would run; rayssl never unpickles code from a "
                                        "checkpoint (delete the file or the checkpoint to resume from an earlier one)") from None

    engine.checkpoint_engine.load = load


def share_fp32_master_partitions(optimizer) -> None:
    """Under ZeRO-3 in fp32, let the optimiser step the parameter partitions in place.

    ZeRO-3 keeps an fp32 master copy of each flat parameter partition unless the partition is
    already fp32 on the optimiser's device, in which case the master is meant to be the partition
    itself (DeepSpeed 0.19's ``_create_fp32_partitions``; its step then copies the master onto
    itself). Its test compares a ``torch.device`` with a device name string, which is never equal,
    so fp32 training would keep a redundant copy. This makes each such master an alias of its
    partition, as DeepSpeed intends. Other stages, and bf16 (where the master
    is a real fp32 copy), are left alone.
    """
    low = getattr(optimizer, "fp16_partitioned_groups_flat", None) or []
    masters = getattr(optimizer, "fp32_partitioned_groups_flat", None) or []
    for part, master in zip(low, masters):
        if (
            part is not None
            and part.dtype == master.dtype
            and part.device == master.device
            and part.shape == master.shape
            and part.data_ptr() != master.data_ptr()
        ):
            master.data = part.data


def full_state_dict(engine, keep: bool = True) -> dict[str, torch.Tensor]:
    """The full fp32 weights (``state_dict`` keys); ``{}`` where ``keep`` is false.

    Under ZeRO-3 this is a collective (every rank calls it) that gathers one parameter at a time, so
    no rank ever holds more than the copy it keeps plus one parameter; otherwise the gather is a no-op.
    """
    import deepspeed

    out = {}
    for name, t in engine.module.state_dict(keep_vars=True).items():
        with deepspeed.zero.GatheredParameters(t, modifier_rank=None):
            if keep:
                out[name] = t.detach().float().cpu().clone()
    return out
