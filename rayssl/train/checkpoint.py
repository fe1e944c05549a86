"""Checkpoints that survive restarts and world-size changes, and the exported weights.

A checkpoint directory holds DeepSpeed's own checkpoint (``ds/``: weights, optimizer and schedule,
one shard per rank) plus a consolidated fp32 ``model.safetensors`` and ``train_state.json`` written
by rank 0. Resuming on the same number of workers loads DeepSpeed's checkpoint; on a different
number (an autoscaled cluster) the consolidated weights are loaded and the optimizer moments start
fresh, because ZeRO partitions do not map onto another world size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from rayssl.train.engine import build_engine, full_state_dict

DS_TAG = "ds"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.json"


def save_checkpoint(engine, directory: str | Path, state: dict, rank: int, world_size: int) -> None:
    """Write a checkpoint into ``directory`` (called on every rank: it holds collectives).

    Args:
        state: the run's position (``TrainState.as_dict()``), saved with ``world_size``.
    """
    directory = Path(directory)
    engine.save_checkpoint(str(directory), tag=DS_TAG)
    weights = full_state_dict(engine, keep=rank == 0)
    if rank == 0:
        save_file(weights, str(directory / WEIGHTS_FILE))
        (directory / STATE_FILE).write_text(json.dumps({**state, "world_size": world_size}, indent=1))


def read_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a rayssl checkpoint (no {STATE_FILE})")
    return json.loads(path.read_text())


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The consolidated fp32 weights of a checkpoint (safetensors: no unpickling)."""
    return load_file(str(Path(directory) / WEIGHTS_FILE))


def restore_engine(engine, directory: str | Path) -> None:
    """Load weights, optimizer and lr schedule from DeepSpeed's checkpoint (same world size)."""
    path, _ = engine.load_checkpoint(
        str(directory), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint under {directory}/{DS_TAG}")


def set_schedule_step(scheduler, step: int) -> None:
    """Move a ``LambdaLR`` to optimiser step ``step`` (after a restart without its saved state)."""
    scheduler.last_epoch = step - 1
    scheduler.step()


def resume_engine(
    model,
    groups: list[dict],
    optimizer_factory: Callable,
    scheduler_factory: Callable,
    ds_config: dict,
    state,
    world_size: int,
    on_checkpoint: Callable[[Path], None] | None = None,
):
    """Build the DeepSpeed engine, resuming from Ray Train's latest checkpoint when there is one.

    ``state`` (a :class:`~rayssl.train.worker.TrainState`) is updated in place from the checkpoint and
    gets ``resumes`` + 1.
    Same world size: DeepSpeed restores weights, optimizer and schedule. Another world size: the
    consolidated weights are loaded before the engine is built and the schedule is moved to the saved
    step. ``on_checkpoint(dir)`` may read extra files while the checkpoint is open.

    Returns:
        ``(engine, how)``: ``how`` is ``None`` for a fresh start, else a short description.
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return build_engine(model, groups, optimizer_factory, scheduler_factory, ds_config), None
    with checkpoint.as_directory() as ckpt_dir:
        saved = read_state(ckpt_dir)
        same_world = saved.pop("world_size") == world_size
        state.update(saved)
        state.resumes += 1
        if on_checkpoint:
            on_checkpoint(Path(ckpt_dir))
        if not same_world:  # autoscaled: consolidated weights, fresh optimizer moments
            model.load_state_dict(load_weights(ckpt_dir))
        engine = build_engine(model, groups, optimizer_factory, scheduler_factory, ds_config)
        if same_world:
            restore_engine(engine, ckpt_dir)
            return engine, "optimizer restored"
        set_schedule_step(engine.lr_scheduler, state.step)
        return engine, f"weights only, now {world_size} workers"


# --------------------------------------------------------------------------- export


def save_export(weights: dict[str, torch.Tensor], meta: dict, path: str | Path) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` and its JSON sidecar ``<path>.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in weights.items()}
    st, sidecar = path.with_suffix(".safetensors"), path.with_suffix(".json")
    save_file(tensors, str(st), metadata={"method": str(meta.get("method", ""))})
    sidecar.write_text(json.dumps(meta, indent=1, sort_keys=True))
    return st, sidecar


def load_export(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read exported weights (``.safetensors``) and their sidecar; ``path`` may omit the suffix."""
    path = Path(path)
    st = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
    sidecar = st.with_suffix(".json")
    if not st.is_file():
        raise FileNotFoundError(f"exported weights not found: {st}")
    if not sidecar.is_file():
        raise FileNotFoundError(f"{st}: missing its JSON sidecar {sidecar.name}")
    return load_file(str(st)), json.loads(sidecar.read_text())
