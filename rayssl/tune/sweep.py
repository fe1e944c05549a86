"""``run_sweep(cfg)``: Ray Tune + OptunaSearch (seeded TPE) + ASHA over pre-training and fine-tuning.

The sweep directory ``<storage_path>/<name>`` is Tune's experiment directory. It also holds
``sweep.json`` (the config), one folder per trial (``trial.json``: which encoder it used; ``finetune/``:
the Ray Train run with ``result.json``), ``pretrain_store/``, ``baseline/`` (from scratch, same budget)
and the leaderboard. Re-running with the same name restores the Tuner: finished trials are kept,
unfinished ones resume (their fine-tuning and pre-training runs continue from their checkpoints). Tune
restores from pickles, so only state files that rayssl signed are handed to it (:mod:`rayssl.tune.seal`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rayssl.config import FinetuneConfig, PretrainConfig, SweepConfig, dump_config
from rayssl.config.search_space import PARAMS, check_methods
from rayssl.train.launch import init_ray, max_workers
from rayssl.train.layout import RunDir
from rayssl.train.trackers import Tracker, check_installed
from rayssl.tune import seal
from rayssl.tune.layout import BASELINE_DIR, SWEEP_FILE, store_root
from rayssl.tune.space import build_search_space, default_params, trial_configs
from rayssl.tune.trial import tune_trial

METRIC, MODE = "val_metric", "max"

log = logging.getLogger(__name__)


class SweepInterrupted(RuntimeError):
    """The sweep was stopped (Ctrl+C) before all its trials finished; its state is saved for a resume."""


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _release_callback(trial_cpus: float):
    """A Tune callback that frees the Ray Train worker placement groups of stopped trials.

    When ASHA stops a trial, Tune kills the trial's process and with it the Ray Train controller. Ray
    Train V2 then relies on a detached clean-up actor that asks the state API (dashboard) whether the
    controller died; without a dashboard, or with several Ray instances on one host, it cannot, and the
    workers' placement group keeps its CPUs: Ray Data of the next trial then waits for CPUs forever. So
    when a trial ends and no other trial runs, this job's remaining placement groups, except Tune's
    own one-bundle trial groups, are removed. With several trials at once it only acts when all end.
    """
    import ray
    from ray import tune
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    class ReleaseStoppedTrials(tune.Callback):
        def __init__(self):
            self.running: set[str] = set()

        def on_trial_start(self, iteration, trials, trial, **info):
            self.running.add(trial.trial_id)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._release(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._release(trial)

        def _release(self, trial) -> None:
            self.running.discard(trial.trial_id)
            if self.running:
                return
            job = ray.get_runtime_context().get_job_id()
            for pg_id, pg in ray.util.placement_group_table().items():
                tune_group = list(pg["bundles"].values()) == [{"CPU": trial_cpus}]
                if pg["state"] == "CREATED" and pg_id.endswith(job) and not tune_group:  # ids end with the job id
                    remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))

    return ReleaseStoppedTrials()


def asha_max_t(ft: FinetuneConfig, grace_period: int) -> int:
    """The last validation epoch before the final one: ASHA rungs stay at or below it.

    ASHA must never stop a trial at its final report, or the test evaluation that follows the
    Ray Train run would be cut off.

    Raises:
        ValueError: no validation happens between ``grace_period`` and the final epoch.
    """
    last = ((ft.epochs - 1) // ft.eval.val_every) * ft.eval.val_every
    if last < grace_period:
        raise ValueError(f"asha.grace_period={grace_period}: fine-tuning validates at epochs "
                         f"{ft.eval.val_every}, {2 * ft.eval.val_every}, ... up to {ft.epochs}; ASHA needs a "
                         f"validation at or after the grace period and before the final epoch (last is {last})")
    return last


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's checked configs and budget, resolved before Ray starts."""

    pretrain: PretrainConfig | None
    """The pre-training config at the presets' values (``None``: no pre-training)."""
    finetune: FinetuneConfig
    train_cpus: float
    """CPUs one trial holds: its process and its largest Ray Train run's workers."""
    max_t: int
    """ASHA's largest rung (:func:`asha_max_t`)."""
    defaults: dict
    """Each searched parameter at its preset's value (the scratch baseline's)."""


def plan_sweep(cfg: SweepConfig) -> SweepPlan:
    """Check everything before Ray starts: the trial configs build, the space fits the method, the sweep
    key is usable and a sweep to resume holds only state files rayssl signed.

    Raises:
        ConfigError / ValueError: naming the key.
        UntrustedSweepState (a ValueError): naming the state file that does not verify.
    """
    seal.check_key_outside(cfg.storage_path)
    seal.sweep_key(create=False)  # a usable key (it is created when the first sweep is signed)
    if cfg.name:
        seal.verify(sweep_dir_of(cfg))
    pre, ft = trial_configs(cfg, {})
    check_methods(cfg.space, pre.model.method if pre is not None else None)
    check_installed(cfg.tracker)
    for name, rng in cfg.space.items():  # both ends of every range give valid configs
        for value in (rng.low, rng.high):
            trial_configs(cfg, {name: value})
    train_cpus = max(max_workers(c.scale) * c.scale.cpus_per_worker for c in (pre, ft) if c is not None)
    return SweepPlan(pre, ft, train_cpus + cfg.trial_cpus, asha_max_t(ft, cfg.asha.grace_period), default_params(cfg))


def concurrent_trials(cfg: SweepConfig, train_cpus: float, cluster_cpus: float) -> int:
    """How many trials may run at once so that ``data_cpus`` stay free for Ray Data.

    Raises:
        ValueError: not even one trial fits, or ``max_concurrent_trials`` asks for more than fit.
    """
    free = cluster_cpus - cfg.data_cpus
    fit = int(free // train_cpus) if train_cpus > 0 else cfg.num_samples
    if fit < 1:
        raise ValueError(f"a trial needs {train_cpus} CPUs for its training workers and data_cpus={cfg.data_cpus} "
                         f"stay free for Ray Data, but the cluster has {cluster_cpus} CPUs; lower "
                         "scale.cpus_per_worker in the finetune/pretrain overrides or data_cpus")
    if cfg.max_concurrent_trials is not None and cfg.max_concurrent_trials > fit:
        raise ValueError(f"max_concurrent_trials={cfg.max_concurrent_trials}: only {fit} trials of {train_cpus} "
                         f"CPUs fit next to data_cpus={cfg.data_cpus} on {cluster_cpus} CPUs (Ray Data would starve)")
    return cfg.max_concurrent_trials or max(1, min(fit, cfg.num_samples))


def sweep_dir_of(cfg: SweepConfig) -> str:
    name = cfg.name or f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}"
    return str(Path(cfg.storage_path).expanduser().resolve() / name)


def _check_same(saved: dict, cfg: SweepConfig, sweep_dir: str) -> None:
    now = dump_config(cfg)
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise ValueError(f"sweep {sweep_dir} exists with a different config (keys {', '.join(diff)}); "
                         "resume with the same settings or choose another name")


def tracker_callbacks(cfg: SweepConfig, sweep_dir: str, parent) -> list:
    """Ray Tune's logger callbacks for ``cfg.tracker``: a nested MLflow run per trial under the sweep's
    ``parent`` run, a W&B group per sweep (offline unless ``WANDB_MODE`` is set), TensorBoard event files."""
    if cfg.tracker == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        return [MLflowLoggerCallback(tracking_uri=parent.uri, experiment_name="rayssl",
                                     tags={"mlflow.parentRunId": parent.run_id}, save_artifact=False)]
    if cfg.tracker == "wandb":
        import os

        from ray.air.integrations.wandb import WandbLoggerCallback

        os.environ.setdefault("WANDB_MODE", "offline")
        return [WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", "rayssl"), group=Path(sweep_dir).name,
                                    mode=os.environ["WANDB_MODE"])]
    if cfg.tracker == "tensorboard":
        from ray.tune.logger import TBXLoggerCallback

        return [TBXLoggerCallback()]
    return []


def build_tuner(cfg: SweepConfig, sweep_dir: str, trainable=None, max_concurrent: int = 1, max_t: int = 1,
                callbacks: list | None = None):
    """A new Tuner, or the restored one when ``sweep_dir`` holds a Tune experiment whose state verifies.

    Args:
        cfg: the sweep config.
        sweep_dir: the experiment directory.
        trainable: ``(params, sweep, sweep_dir) -> None`` (default :func:`tune_trial`).
        max_concurrent: trials at once.
        max_t: ASHA's largest rung (see :func:`asha_max_t`).
    """
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    fn = tune.with_parameters(trainable or tune_trial, sweep=dump_config(cfg), sweep_dir=sweep_dir)
    fn = tune.with_resources(fn, {"CPU": cfg.trial_cpus})
    seal.no_pickled_errors()
    seal.verify(sweep_dir)  # Tune unpickles these: right before it does
    if tune.Tuner.can_restore(sweep_dir):
        return tune.Tuner.restore(sweep_dir, fn, resume_unfinished=True, resume_errored=True)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials)
    asha = ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=min(cfg.asha.grace_period, max_t),
                         reduction_factor=cfg.asha.reduction_factor, stop_last_trials=False)
    path = Path(sweep_dir)
    tuner = tune.Tuner(
        fn,
        param_space=build_search_space(cfg.space),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, search_alg=OptunaSearch(sampler=sampler), scheduler=asha,
            num_samples=cfg.num_samples, max_concurrent_trials=max_concurrent, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=path.name, storage_path=str(path.parent), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                  callbacks=[_release_callback(cfg.trial_cpus), *(callbacks or []),
                                             seal.seal_callback()]),
    )
    seal.seal(sweep_dir, names=["tuner.pkl"])  # Tune wrote it just now, straight to the sweep directory
    return tuner


def run_baseline(cfg: SweepConfig, sweep_dir: str) -> str | None:
    """Fine-tune from scratch with the preset's values of the searched parameters and the same budget."""
    from rayssl.finetune.driver import finetune

    done = Path(sweep_dir) / BASELINE_DIR / RunDir.RESULT
    if done.is_file():
        return str(done.parent)
    _, ft = trial_configs(cfg, {})
    ft.pretrained = "none"
    ft.run.name, ft.run.storage_path = BASELINE_DIR, sweep_dir
    return finetune(ft)


def run_sweep(cfg: SweepConfig, trainable=None) -> str:
    """Run (or resume) a sweep, the from-scratch baseline and the leaderboard; return the sweep directory.

    Args:
        cfg: the sweep config.
        trainable: replaces :func:`rayssl.tune.trial.tune_trial` (same signature), e.g. in tests.

    Raises:
        SweepInterrupted: stopped (Ctrl+C) before every trial finished; the baseline and leaderboard are
            skipped and re-running with the same name resumes.
    """
    import ray

    from rayssl.tune.leaderboard import write_leaderboard
    from rayssl.tune.store import PretrainStore, store_lock

    plan = plan_sweep(cfg)
    sweep_dir = sweep_dir_of(cfg)
    saved = Path(sweep_dir) / SWEEP_FILE
    if saved.is_file():
        _check_same(json.loads(saved.read_text())["config"], cfg, sweep_dir)
    if not ray.is_initialized():
        init_ray()
    limit = concurrent_trials(cfg, plan.train_cpus, ray.cluster_resources().get("CPU", 0))
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"task": cfg.task, "metric": METRIC, "mode": MODE, "searched": list(cfg.space),
                                 "defaults": plan.defaults, "config": dump_config(cfg),
                                 "params": {n: PARAMS[n].job + "." + PARAMS[n].key for n in cfg.space}}, indent=1))
    # the lock actor lives as long as this driver; trials find it by the store's resolved path
    lock = store_lock(str(PretrainStore(store_root(cfg.store, sweep_dir)).root)) if plan.pretrain is not None else None
    log.info("sweep %s: %d trials, %d at a time, searching %s; ASHA rungs up to epoch %d; dir %s", cfg.task,
             cfg.num_samples, limit, ", ".join(cfg.space), plan.max_t, sweep_dir)
    parent = Tracker(cfg.tracker, sweep_dir, Path(sweep_dir).name, dump_config(cfg),
                     resume=(Path(sweep_dir) / "tracker.json").is_file()) if cfg.tracker != "none" else None
    tuner = build_tuner(cfg, sweep_dir, trainable, limit, plan.max_t, tracker_callbacks(cfg, sweep_dir, parent))
    results = tuner.fit()  # a first Ctrl+C makes Tune save its state and return
    del lock
    finished = results.num_terminated + results.num_errors
    if finished < cfg.num_samples:
        raise SweepInterrupted(f"sweep {sweep_dir} stopped with {finished} of {cfg.num_samples} trials finished (no "
                               f"baseline, no leaderboard yet); its state is saved: re-run with "
                               f"name={Path(sweep_dir).name} and the same settings to resume it")
    if cfg.baseline:
        run_baseline(cfg, sweep_dir)
    write_leaderboard(sweep_dir)
    if parent is not None:
        parent.artifacts([Path(sweep_dir) / f for f in ("leaderboard.csv", "leaderboard.md", "leaderboard.png", SWEEP_FILE)])
        parent.close(finished=True)
    return sweep_dir
