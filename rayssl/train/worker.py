"""What every Ray Train worker loop shares: the worker's context, the state checkpoints carry, loss windows,
seeded generators and the epoch loop over fresh crops. Pre-training and fine-tuning plug a step and their
report hooks into :func:`train_epochs`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import resource
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from rayssl.config import DataConfig, OptimConfig, ScaleConfig
from rayssl.data.crops import DeviceCrops, epoch_batches
from rayssl.logs import configure_logging
from rayssl.train.artifacts import RunFiles
from rayssl.train.engine import resolve_precision
from rayssl.train.trackers import Tracker

if TYPE_CHECKING:
    from rayssl.data.cache import CachedVolumes
    from rayssl.data.kept import KeptVolumes

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where a run stands; checkpoints carry it (``train_state.json``) and a resume restores it."""

    step: int = 0
    """Optimiser steps done."""
    epoch: int = 0
    """Epochs completed."""
    batch_in_epoch: int = 0
    """Micro-batches done in the current epoch (a resume skips them: the same crops)."""
    samples: int = 0
    resumes: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def update(self, saved: dict) -> None:
        """Take the fields a checkpoint saved (unknown keys are ignored)."""
        for f in dataclasses.fields(self):
            if f.name in saved:
                setattr(self, f.name, saved[f.name])


@dataclass
class WorkerContext:
    """This worker's rank, world size, device and precision, and the run's files and tracker on rank 0."""

    rank: int
    world: int
    device: torch.device
    precision: str
    files: RunFiles | None
    tracker: Tracker | None = None

    @classmethod
    def current(cls, run_dir: str, scale: ScaleConfig) -> "WorkerContext":
        import ray.train
        import ray.train.torch

        configure_logging()  # rayssl's lines, also where Ray started without rayssl's setup hook
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        device = ray.train.torch.get_device()
        files = RunFiles(run_dir, pull_metrics=True) if rank == 0 else None
        return cls(rank, world, device, resolve_precision(scale, device.type == "cuda"), files)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def resumed(self, state: TrainState, how: str | None, tracker: str = "none", name: str = "",
                params: dict | None = None) -> None:
        """After the engine is built: say where the run resumed, keep only the metric lines logged up to that
        checkpoint's step (the steps after it are trained, and logged, again), and open the tracker on rank 0."""
        if self.files:
            self.files.keep_metrics_until(state.step)
            if how:
                log.info("resumed at epoch %d step %d (%s)", state.epoch, state.step, how)
            self.tracker = Tracker(tracker, self.files.local, name, params, resume=how is not None)

    def log_metrics(self, metrics: dict) -> None:
        """One metric line: ``metrics.jsonl`` (with the time) and the tracker, on rank 0."""
        if self.files:
            self.files.log_metrics({"time": time.time(), **metrics})
            if self.tracker:
                self.tracker.log(metrics, int(metrics.get("step", 0)))

    def close(self) -> None:
        if self.tracker:
            self.tracker.close(finished=False)  # the driver adds the artifacts and ends the tracked run

    def seed(self, seed: int, step: int) -> int:
        """A seed per run seed, rank and optimiser step (a resume draws new numbers, not the first ones again)."""
        return seed * 1000 + self.rank + step

    def generator(self, seed: int, step: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed(seed, step))


def group_optim(optim: OptimConfig, scale: ScaleConfig, world: int, lr: float) -> tuple[OptimConfig, float]:
    """The optimiser settings and lr of a worker group of ``world``: the global batch stays the one planned for the
    largest group (``scale.max_workers x optim.grad_accum`` micro-batches a step), so an elastic run restarted on
    fewer workers accumulates more micro-batches on each. Where ``world`` does not divide the planned micro-batches
    they are rounded up and ``lr`` follows the batch by the linear rule (:func:`rayssl.train.optim.effective_lr`).

    Returns:
        ``(optim with this group's grad_accum, lr)``.
    """
    planned = optim.grad_accum * scale.max_workers
    accum = -(-planned // world)
    return optim.model_copy(update={"grad_accum": accum}), lr * accum * world / planned


def steps_per_epoch(num_cases: int, patches_per_case: int, world_size: int, batch_size: int, grad_accum: int) -> int:
    """Optimiser steps per epoch when every worker gets an equal share of the cases (Ray Train's
    ``streaming_split(equal=True)``), cuts ``patches_per_case`` crops of each and drops the last batch.

    Raises:
        ValueError: a worker's crops of an epoch do not fill one optimiser step (the run would never step).
    """
    crops = (num_cases // world_size) * patches_per_case
    if crops < batch_size * grad_accum:
        raise ValueError(f"each of the {world_size} worker(s) gets {num_cases // world_size} training case(s) x "
                         f"{patches_per_case} crop(s) = {crops} crops an epoch, fewer than one optimiser step of "
                         f"batch_size {batch_size} x optim.grad_accum {grad_accum}: raise data.patches_per_volume "
                         "or lower batch_size")
    return crops // batch_size // grad_accum


def total_steps(steps_per_epoch: int, epochs: int, max_steps: int | None) -> int:
    """The run's optimiser steps: all epochs, or ``max_steps`` when that is fewer."""
    return min(steps_per_epoch * epochs, max_steps) if max_steps else steps_per_epoch * epochs


class Eta:
    """Time left in a run, from this process's pace since it started (or resumed) at ``step``."""

    def __init__(self, step: int, total: int):
        self.t0, self.step0, self.total = time.perf_counter(), step, total

    def __call__(self, step: int) -> str:
        if step <= self.step0:
            return "ETA ?"
        left = (time.perf_counter() - self.t0) / (step - self.step0) * max(0, self.total - step)
        return f"ETA {int(left // 60)}m{int(left % 60):02d}s"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def all_mean(value: float) -> float:
    """The mean of ``value`` over the workers."""
    t = torch.tensor([value], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return float(t)


def all_gather(value: float) -> list[float]:
    """``value`` of every worker, in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return [float(v) for v in out]


def broadcast(obj):
    """Rank 0's ``obj`` on every worker."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


class LossWindow:
    """Losses and samples since the window was last reset (one worker's).

    The losses add up on their device: nothing waits for the GPU until :meth:`mean` reads the sum, once per
    report, so the hot loop queues steps without a host sync.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.total: torch.Tensor | float = 0.0
        self.count, self.samples, self.t0 = 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, samples: int) -> None:
        """Add one micro-batch's loss (a tensor, kept on its device) and its number of samples."""
        self.total = self.total + loss.detach().float()
        self.count, self.samples = self.count + 1, self.samples + samples

    def mean(self) -> float:
        """The window's mean loss over all workers (a collective; the one read of the losses)."""
        return all_mean(float(self.total) / max(1, self.count))

    def samples_per_s(self, world: int) -> float:
        """Samples per second of all workers, assuming each trained as many as this one."""
        return self.samples * world / max(time.perf_counter() - self.t0, 1e-9)


def started_now(rows: Callable[[], Iterable[dict]]) -> Callable[[], Iterable[dict]]:
    """``rows`` (an epoch's stream, e.g. a dataset shard's ``iter_rows``) whose first stream starts now, in a
    background thread: the data pipeline spins up (its coordinator, its read tasks) while the worker builds
    its engine. Later calls are plain ``rows()``; an error of the first stream is raised where it is used."""
    first: list = []

    def start() -> None:
        try:
            stream = iter(rows())
            first.append(itertools.chain([next(stream)], stream))
        except StopIteration:
            first.append(iter(()))
        except BaseException as e:  # noqa: BLE001 - re-raised in the training thread
            first.append(e)

    thread = threading.Thread(target=start, name="rayssl-first-rows", daemon=True)
    thread.start()
    used = False

    def epoch_rows() -> Iterable[dict]:
        nonlocal used
        if used:
            return rows()
        used = True
        thread.join()
        if isinstance(first[0], BaseException):
            raise first[0]
        return first[0]

    return epoch_rows


def volume_stream(volumes: KeptVolumes | CachedVolumes | None, rank: int, world: int) -> Callable[[], Iterable[dict]]:
    """This worker's training volumes, one stream per epoch: its share of the kept or cached ``volumes``, else its
    ``"train"`` dataset shard, whose first epoch starts now in the background (:func:`started_now`)."""
    if volumes:
        return volumes.epoch_rows(rank, world)
    import ray.train

    return started_now(ray.train.get_dataset_shard("train").iter_rows)


def on_device(batches: Iterable[dict[str, torch.Tensor]], device: torch.device | None) -> Iterator[dict[str, torch.Tensor]]:
    """``batches`` on ``device``. On a GPU each batch is pinned and copied without blocking one batch ahead, so
    the copy overlaps the step before it; elsewhere (CPU, or ``device`` None) the batches pass unchanged."""
    if device is None or device.type != "cuda":
        yield from batches
        return
    ahead = None
    for batch in batches:
        moved = {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
        if ahead is not None:
            yield ahead
        ahead = moved
    if ahead is not None:
        yield ahead


def _with_last(items: Iterable) -> Iterator[tuple[object, bool]]:
    """``(item, is_last)`` pairs."""
    it = iter(items)
    try:
        item = next(it)
    except StopIteration:
        return
    for following in it:
        yield item, False
        item = following
    yield item, True


def train_epochs(
    state: TrainState,
    rows: Callable[[], Iterable[dict]],
    data: DataConfig,
    *,
    epochs: int,
    steps: int,
    batch_size: int,
    grad_accum: int,
    columns: list[str],
    shuffle_seed: int,
    world: int,
    step: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, int]],
    window: LossWindow,
    after_step: Callable[[], None] | None = None,
    after_epoch: Callable[[], None] | None = None,
    device: torch.device | None = None,
    kept: bool = False,
) -> None:
    """Train until ``steps`` optimiser steps or ``epochs`` epochs, on fresh crops every epoch.

    Args:
        state: updated in place: ``step`` after every optimiser step, ``batch_in_epoch`` after every
            micro-batch (a resumed epoch skips the micro-batches already done: the same crops), ``epoch``
            when an epoch's batches are all done, ``samples``.
        rows: returns this epoch's stream of preprocessed volumes (e.g. a dataset shard's ``iter_rows``).
        data: crops and flips (:func:`rayssl.data.crops.epoch_batches`).
        epochs, steps: the budget.
        batch_size, grad_accum: micro-batch size; micro-batches per optimiser step.
        columns: the batch fields.
        shuffle_seed: orders the crops within the mixing buffer (the worker's rank).
        world: the number of workers (``state.samples`` counts all of theirs).
        step: trains on one micro-batch; returns its loss and number of samples.
        window: receives each micro-batch's loss.
        after_step: called after each optimiser step but the last.
        after_epoch: called after each completed epoch.
        device: where the batches go before ``step``: on a GPU, kept volumes (``rows`` of a
            :class:`~rayssl.data.kept.KeptVolumes`) are sent once and cut there (:class:`DeviceCrops`), other
            streams' crops are cut on the CPU and copied one batch ahead (:func:`on_device`); ``None``: the CPU.
        kept: whether ``rows`` are kept volumes (a set that fits memory, so it may be kept on the device too).
    """
    crops = DeviceCrops(device, data) if kept and device is not None and device.type == "cuda" else None
    micro = 0
    while state.step < steps and state.epoch < epochs:
        batches = epoch_batches(rows(), data, state.epoch, batch_size, columns, shuffle_seed, crops)
        batches = batches if crops else on_device(batches, device)
        for i, (batch, last) in enumerate(_with_last(batches)):
            if i < state.batch_in_epoch:
                continue
            loss, n = step(batch)
            window.add(loss, n)
            micro += 1
            state.batch_in_epoch = i + 1
            state.samples += n * world
            if micro % grad_accum:
                continue
            state.step += 1
            if state.step >= steps and not last:
                return
            if state.step < steps and after_step:
                after_step()
        state.epoch += 1
        state.batch_in_epoch = 0
        if after_epoch:
            after_epoch()
