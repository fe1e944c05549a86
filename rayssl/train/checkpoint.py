"""Checkpoints that survive restarts, damage and world-size changes.

A checkpoint directory holds DeepSpeed's own checkpoint (``ds/``: weights, optimizer and schedule,
one shard per rank) plus a consolidated fp32 ``model.safetensors`` and ``train_state.json`` written
by rank 0, and one ``files_rank<R>.json`` per rank with the SHA-256 of every file that rank wrote.
A resume takes the newest intact checkpoint of the run directory (by step, whether or not Ray Train
registered it before a crash), saying which damaged ones it passed over. On the same number of
workers it loads DeepSpeed's checkpoint; on a different number (an autoscaled cluster) the
consolidated weights are loaded and the optimizer moments start fresh, because ZeRO partitions do
not map onto another world size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from rayssl.models.weights_file import read_safetensors
from rayssl.train.engine import build_engine, full_state_dict

DS_TAG = "ds"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.json"
FILES_MANIFEST = "files_rank{rank}.json"

log = logging.getLogger(__name__)


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
    seal(directory, rank)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def seal(directory: str | Path, rank: int) -> None:
    """Record the SHA-256 of every file this rank wrote into ``directory`` (its own part of a checkpoint),
    so a resume can tell an intact checkpoint from a truncated, replaced or incomplete one."""
    directory = Path(directory)
    files = {str(p.relative_to(directory)): _sha256(p) for p in sorted(directory.rglob("*"))
             if p.is_file() and not p.name.startswith("files_rank")}
    (directory / FILES_MANIFEST.format(rank=rank)).write_text(json.dumps(files, indent=1))


def _inside(directory: str | Path, rel) -> Path | None:
    """``directory / rel`` when it lies inside ``directory`` with links resolved; ``None`` for an absolute path,
    ``..`` or a symlink out of it (never opened)."""
    try:
        base, real = os.path.realpath(directory), os.path.realpath(Path(directory) / rel)
    except (TypeError, ValueError):  # not a path, or a NUL byte in it
        return None
    return Path(directory) / rel if rel and real != base and os.path.commonpath([base, real]) == base else None


def damage(directory: str | Path) -> str | None:
    """What is wrong with a checkpoint directory, or ``None`` when every rank's files are there and match
    their recorded SHA-256. Only files inside ``directory`` are opened, whatever the manifests list."""
    directory = Path(directory)
    try:
        if (state := _inside(directory, STATE_FILE)) is None:
            return f"{STATE_FILE} leads outside the checkpoint (not opened)"
        world = int(json.loads(state.read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        return f"no readable {STATE_FILE} ({type(e).__name__})"
    if world < 1:
        return f"{STATE_FILE} says world_size {world}"
    for rank in range(world):
        name = FILES_MANIFEST.format(rank=rank)
        if (manifest := _inside(directory, name)) is None:
            return f"{name} leads outside the checkpoint (not opened)"
        try:
            files = json.loads(manifest.read_text())
        except (OSError, ValueError, RecursionError):
            return f"no readable {name} (an incomplete or pre-manifest checkpoint)"
        if not isinstance(files, dict):
            return f"{name} is not a map of file names to SHA-256"
        for rel, digest in files.items():
            if (path := _inside(directory, rel)) is None:
                return f"{name} lists {str(rel)[:200]!r}, outside the checkpoint (not opened)"
            if not path.is_file():
                return f"{rel} is missing"
            if _sha256(path) != digest:
                return f"{rel} does not match its recorded SHA-256 (truncated or replaced)"
    return None


def _candidates(run_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of the run's checkpoint directories, newest first (unreadable steps last)."""
    import pyarrow.fs as pafs

    from rayssl.storage import is_uri, open_uri

    fs, root = open_uri(run_dir)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    out = []
    for info in infos:
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        if not is_uri(run_dir) and _inside(root, info.base_name) is None:
            log.warning("ignoring %s: a link out of the run directory", info.path)
            continue
        try:
            if not is_uri(run_dir) and _inside(info.path, STATE_FILE) is None:
                raise ValueError(f"{STATE_FILE} leads outside the checkpoint")
            with fs.open_input_stream(posixpath.join(info.path, STATE_FILE)) as f:
                step = int(json.loads(f.read())["step"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            step = -1
        path = f"{run_dir.rstrip('/')}/{info.base_name}" if is_uri(run_dir) else info.path
        out.append((step, path))
    return sorted(out, key=lambda sp: (sp[0], sp[1]), reverse=True)


def newest_intact(run_dir: str) -> tuple[str | None, list[str]]:
    """The newest intact checkpoint of a run (``None`` when the run has none), and a line per damaged
    checkpoint passed over on the way.

    Raises:
        RuntimeError: the run has checkpoints but none is intact (each is listed with what is wrong).
    """
    import ray.train

    skipped = []
    for step, path in _candidates(run_dir):
        with ray.train.Checkpoint(path).as_directory() as local:
            wrong = damage(local)
        if wrong is None:
            return path, skipped
        skipped.append(f"{path} (step {step}): {wrong}")
    if skipped:
        raise RuntimeError("no intact checkpoint to resume from:\n  " + "\n  ".join(skipped) +
                           f"\nremove the damaged checkpoint directories (or {run_dir}) to start over")
    return None, skipped


def read_state(directory: str | Path) -> dict:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a rayssl checkpoint (no {STATE_FILE})")
    return json.loads(path.read_text())


def load_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The consolidated fp32 weights of a checkpoint (safetensors: no unpickling)."""
    return read_safetensors(Path(directory) / WEIGHTS_FILE)


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
    run_dir: str,
    on_checkpoint: Callable[[Path], None] | None = None,
):
    """Build the DeepSpeed engine, resuming from the run's newest intact checkpoint when there is one
    (:func:`newest_intact`, chosen on rank 0 for every rank).

    ``state`` (a :class:`~rayssl.train.worker.TrainState`) is updated in place from the checkpoint and
    gets ``resumes`` + 1.
    Same world size: DeepSpeed restores weights, optimizer and schedule. Another world size: the
    consolidated weights are loaded before the engine is built and the schedule is moved to the saved
    step. ``on_checkpoint(dir)`` may read extra files while the checkpoint is open.

    Returns:
        ``(engine, how)``: ``how`` is ``None`` for a fresh start, else a short description.
    """
    import ray.train

    from rayssl.train.worker import broadcast

    rank = ray.train.get_context().get_world_rank()
    path, skipped = broadcast(newest_intact(run_dir) if rank == 0 else None)
    if rank == 0:
        for line in skipped:
            log.warning("passing over a damaged checkpoint: %s", line)
    if path is None:
        return build_engine(model, groups, optimizer_factory, scheduler_factory, ds_config), None
    with ray.train.Checkpoint(path).as_directory() as ckpt_dir:
        saved = read_state(ckpt_dir)
        saved_world = saved.pop("world_size")
        same_world = saved_world == world_size
        state.update(saved)
        # the micro-batches each worker did of the epoch, on this group: the same share of the epoch's crops
        state.batch_in_epoch = state.batch_in_epoch * saved_world // world_size
        state.resumes += 1
        if on_checkpoint:
            on_checkpoint(Path(ckpt_dir))
        if not same_world:  # autoscaled: consolidated weights, fresh optimizer moments
            model.load_state_dict(load_weights(ckpt_dir))
        engine = build_engine(model, groups, optimizer_factory, scheduler_factory, ds_config)
        where = f"{posixpath.basename(path.rstrip('/'))}" + (f", after {len(skipped)} damaged" if skipped else "")
        if same_world:
            restore_engine(engine, ckpt_dir)
            return engine, f"{where}; optimizer restored"
        set_schedule_step(engine.lr_scheduler, state.step)
        return engine, f"{where}; weights only, now {world_size} workers"
