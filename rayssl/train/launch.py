"""Launching Ray Train runs: Ray start-up, worker counts, the GPU decision, run directories, and one
function that builds and fits a ``TorchTrainer``. Pre-training, fine-tuning and the sweep's trials all
launch through here.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rayssl.config import DataConfig, RunConfig, ScaleConfig, dump_config
from rayssl.logs import QUIET_ENV, VERBOSE_ENV, verbose
from rayssl.storage import is_uri
from rayssl.train.artifacts import RunFiles
from rayssl.train.layout import RunDir
from rayssl.train.trackers import track_artifacts

if TYPE_CHECKING:
    from rayssl.data.cache import CachedVolumes
    from rayssl.data.kept import KeptVolumes

log = logging.getLogger(__name__)


def init_ray() -> None:
    """Join the cluster a job was submitted to (``RAY_ADDRESS`` / job context), else start a local Ray.

    A local Ray runs :func:`rayssl.logs.quiet_process` in every worker process (its
    ``worker_process_setup_hook``); on a cluster the job's runtime environment sets it
    (``cluster/runtime_env.yaml``).
    """
    import ray

    if ray.is_initialized():
        return
    t0 = time.perf_counter()
    # the level of Ray's own loggers in the job's processes, set as Ray configures them (after the setup hook)
    logging_config = ray.LoggingConfig(log_level="INFO" if verbose() else "WARNING")
    if os.environ.get("RAY_ADDRESS"):
        log.info("joining the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        ray.init(address=os.environ["RAY_ADDRESS"], logging_config=logging_config)
    else:
        log.info("starting a local Ray")
        env = {VERBOSE_ENV: "1"} if verbose() else dict(QUIET_ENV)
        ray.init(include_dashboard=False, runtime_env={"worker_process_setup_hook": "rayssl.logs.quiet_process",
                                                       "env_vars": env}, logging_config=logging_config)
    log.info("Ray up in %.1f s: %g CPUs, %g GPUs", time.perf_counter() - t0, ray.cluster_resources().get("CPU", 0),
             ray.cluster_resources().get("GPU", 0))


def max_workers(scale: ScaleConfig) -> int:
    """The number of workers, or the largest of an elastic ``[min, max]``."""
    return scale.max_workers


def spare_cpus(scale: ScaleConfig) -> int:
    """The CPUs free now that the training workers will leave free: the training volumes preprocess on them
    while the workers start. 0 inside a placement group (a sweep's trial): trials share the CPUs, and a
    worker waiting for volumes while holding its CPU could starve their preprocessing."""
    import ray
    from ray.util import get_current_placement_group

    if get_current_placement_group() is not None:
        return 0
    return max(0, int(ray.available_resources().get("CPU", 0) - scale.cpus_per_worker * max_workers(scale)))


def check_cases_per_worker(num_cases: int, workers: int, source: str) -> None:
    """Every worker crops its own share of the training cases (Ray Train splits them equally)."""
    if num_cases < workers:
        raise ValueError(f"data.source={source!r} has {num_cases} training case(s) but scale.num_workers asks for "
                         f"{workers} workers; each worker needs at least one case (fewer workers or more cases)")


@dataclass(frozen=True)
class RunPlan:
    """What every Ray Train run's workers are given, resolved once on the driver. Pre-training and
    fine-tuning extend it (``PretrainPlan``, ``FinetunePlan``)."""

    run: RunDir
    num_cases: int
    """Training cases (each worker crops its share)."""
    patches_per_case: int
    """Fresh crops per case and epoch."""
    lr: float
    """Peak learning rate (the batch scaling rule applied)."""
    recipe: str | None
    """The preprocessing recipe of the training volumes."""
    volumes: KeptVolumes | CachedVolumes | None = field(default=None, kw_only=True)
    """The training volumes the workers read: kept in Ray's object store (the run may start before they are all
    preprocessed) or the cache's files; ``None``: the workers read the ``"train"`` dataset shard."""

    def training_cases(self) -> int:
        """The training volumes an epoch streams, after quarantine: counted from ``volumes`` (kept ones wait for
        the preprocessing), else ``num_cases``."""
        return self.volumes.cases() if self.volumes else self.num_cases


def run_dir(run: RunConfig, default_name: str) -> RunDir:
    """``<run.storage_path>/<run.name>``, the name defaulting to ``default_name-<time>``."""
    name = run.name or f"{default_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = run.storage_path if is_uri(run.storage_path) else str(Path(run.storage_path).resolve())
    return RunDir(name, storage, f"{storage.rstrip('/')}/{name}")


def open_run(cfg, where: RunDir) -> RunFiles:
    """A run's first step, before :func:`fit`: its files, with ``config.json`` (``cfg``, every default filled in)."""
    files = RunFiles(where.path)
    files.write_json(RunDir.CONFIG, dump_config(cfg))
    return files


def finish_run(files: RunFiles, run: RunConfig, where: RunDir, summary: dict, artifacts: list[str]) -> None:
    """A run's closing steps, once its weights are exported: write ``result.json`` (``summary``), hand it,
    ``config.json``, ``metrics.csv`` and ``artifacts`` (paths in the run directory) to ``run.tracker``, and
    upload the staged files to a remote run directory."""
    files.write_json(RunDir.RESULT, summary)
    track_artifacts(run.tracker, files, where.name, [RunDir.RESULT, RunDir.CONFIG, RunDir.METRICS_CSV, *artifacts])
    files.sync()


# --------------------------------------------------------------------------- GPUs


def _autoscaling_config_file() -> str | None:
    """The ``--autoscaling-config`` of this cluster's autoscaler when it runs on this machine (the head node,
    where ``ray job submit`` runs drivers; the launcher puts it at ``~/ray_bootstrap_config.yaml``)."""
    import psutil
    import ray

    port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1]
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if any(a.endswith("monitor.py") for a in args) and any(a.startswith("--gcs-address=") and a.endswith(f":{port}") for a in args):
            return next((a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")), None)
    return None


def autoscaler_max_gpus() -> float:
    """GPUs the cluster's autoscaler can bring up (0 when it has no GPU node types or none is known).

    Read from the cluster config Ray reports (KubeRay, autoscaler v2), else from the autoscaler's config file
    on the head node (cluster launcher, ``RAY_FAKE_CLUSTER``).
    """
    from ray._private.state import state  # the same source Ray Train checks cluster capacity with

    reported = (state.get_max_resources_from_cluster_config() or {}).get("GPU", 0)
    if reported:
        return float(reported)
    path = _autoscaling_config_file()
    if not path:
        return 0.0
    import yaml

    config = yaml.safe_load(Path(path).expanduser().read_text()) or {}
    types = config.get("available_node_types", {})
    return float(sum(t.get("resources", {}).get("GPU", 0) * t.get("max_workers", config.get("max_workers", 0)) for t in types.values()))


def use_gpu(scale: ScaleConfig) -> bool:
    """``scale.use_gpu``; unset: GPUs when the cluster has some now or its autoscaler can add GPU nodes.

    A cluster whose GPU node types sit at zero nodes thus trains on GPUs (waiting for the autoscaler)
    rather than silently on CPU; the decision is logged.
    """
    import ray

    if scale.use_gpu is not None:
        return scale.use_gpu
    up = ray.cluster_resources().get("GPU", 0)
    addable = 0.0 if up else autoscaler_max_gpus()
    gpu = up > 0 or addable > 0
    seen = f"{up:g} GPUs up" if up else f"no GPU up, {addable:g} the autoscaler can add"
    how = "GPU" if up else ("GPU, waiting for the autoscaler to add GPU nodes" if gpu else "CPU")
    log.info("scale.use_gpu not set: %s -> %s", seen, how)
    return gpu


def scaling_config(scale: ScaleConfig, data: DataConfig):
    """Ray Train's ``ScalingConfig``; warns when the workers would leave Ray Data no CPU while it streams
    (``keep_volumes=false``; kept or cached volumes are read by the workers themselves)."""
    import ray
    import ray.train

    gpu = use_gpu(scale)
    wanted = scale.cpus_per_worker * max_workers(scale)
    streams = not data.cache_dir and data.keep_volumes is False
    if streams and wanted >= ray.cluster_resources().get("CPU", 0) > 0:
        log.warning("the train workers reserve %g of the cluster's %g CPUs and Ray Data needs some to feed them; "
                    "unless the autoscaler adds nodes, lower scale.cpus_per_worker", wanted, ray.cluster_resources()["CPU"])
    resources = {"CPU": scale.cpus_per_worker}
    if gpu:
        resources["GPU"] = scale.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=scale.num_workers, use_gpu=gpu, resources_per_worker=resources)


def fit(loop: Callable[[dict], None], loop_config: dict, scale: ScaleConfig, data: DataConfig, run: RunConfig,
        where: RunDir, dataset, callbacks: list | None = None):
    """Build a ``TorchTrainer`` running ``loop`` on ``dataset`` (as the ``"train"`` shard; ``None`` when the
    workers read kept volumes) and fit it.

    Re-running with the same ``where.name`` resumes from the run's last checkpoint.

    Returns:
        ``(result, wall seconds)``.

    Raises:
        The run's error, when it failed.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=scaling_config(scale, data),
        run_config=ray.train.RunConfig(
            name=where.name,
            storage_path=where.storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=run.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            callbacks=callbacks,
            # Ray Train's own console lines (worker group start, every report) only with --verbose
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING"),
        ),
        datasets={"train": dataset} if dataset is not None else None,
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    if result.error:
        raise result.error
    return result, time.perf_counter() - t0
