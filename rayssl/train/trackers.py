"""Experiment tracking: TensorBoard, MLflow or Weights & Biases, chosen with ``run.tracker``.

Rank 0 of a Ray Train run opens the tracker's run, logs the full config as parameters and every metric
line at its step; the driver reopens the same run at the end to log the artifacts (previews, exported
weights, ``result.json``). MLflow follows ``MLFLOW_TRACKING_URI`` and defaults to MLflow's recommended local
store, SQLite, in the run directory (``mlflow.db``, artifacts in ``mlartifacts/``), which ``mlflow ui`` and
``MlflowClient`` read with their own defaults; W&B runs offline unless ``WANDB_MODE`` says otherwise (nodes
may have no internet); TensorBoard writes event files to ``tensorboard/`` in the run directory. The
libraries are optional extras (``pip install -e ".[mlflow]"``, ``.[tensorboard]``, ``.[wandb]``).
"""

# Sweeps log through Ray Tune's logger callbacks (rayssl/tune/sweep.py); training keeps this Tracker because Ray
# Train V2 (the default, RAY_TRAIN_V2_ENABLED) refuses Tune callbacks in its RunConfig ("Passing in a Ray Tune
# callback is no longer supported", ray/train/v2/api/config.py) and ships no tracker callback of its own (only the
# DeveloperAPI UserCallback on the controller). Ray's in-worker helpers cannot stand in either: there is none for
# TensorBoard, setup_mlflow starts a new run on every call (a restarted worker or the driver's artifact step cannot
# reopen it: tracker.json does that here), and setup_wandb checks the rank through Train V1's session, which V2
# workers lack, so every worker would open a W&B run.

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

TRACKERS = ("none", "tensorboard", "mlflow", "wandb")
RECORD = "tracker.json"
MLFLOW_DB, MLFLOW_ARTIFACTS = "mlflow.db", "mlartifacts"
"""MLflow's default store in a run (or sweep) directory: SQLite, the artifacts in a folder beside it."""

log = logging.getLogger(__name__)
_announced: set[str] = set()


def mlflow_default_uri(run_dir: str | Path) -> str:
    """``sqlite:////abs/run/mlflow.db``: where a run logs when ``MLFLOW_TRACKING_URI`` is not set."""
    return f"sqlite:///{(Path(run_dir) / MLFLOW_DB).resolve().as_posix()}"


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """``{"data": {"roi": [32, 32, 32]}}`` -> ``{"data.roi": "[32, 32, 32]"}`` (the trackers' parameters)."""
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if not isinstance(v, str) else v
    return out


def check_installed(kind: str) -> None:
    """Raise ``ValueError`` (before Ray starts) when ``run.tracker``'s library is not installed."""
    if kind == "none":
        return
    import importlib.util

    if importlib.util.find_spec(kind) is None:  # each tracker's module and extra share its name
        raise ValueError(f"run.tracker={kind} needs {kind}: pip install -e \".[{kind}]\"")


class Tracker:
    """One tracked run. ``kind`` ``none`` does nothing."""

    def __init__(self, kind: str, run_dir: str | Path, name: str, params: dict | None = None, resume: bool = False):
        self.kind, self.run_dir, self.name = kind, Path(run_dir), name
        self._handle = None
        if kind == "none":
            return
        record = self.run_dir / RECORD
        known = json.loads(record.read_text()) if record.is_file() else {}
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._handle = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            if params and not resume:
                self._handle.add_text("config", "\n".join(f"    {k} = {v}" for k, v in flatten(params).items()))
        elif kind == "mlflow":
            import mlflow

            default = mlflow_default_uri(self.run_dir)
            uri = self.uri = os.environ.get("MLFLOW_TRACKING_URI") or default
            if uri == default:
                for quiet in ("mlflow.store.db.utils", "alembic"):  # "creating tables": nothing to act on
                    logging.getLogger(quiet).setLevel(logging.WARNING)
                if uri not in _announced:  # once per process: at the start (rank 0, sweep) and the end (driver)
                    _announced.add(uri)
                    log.info("MLflow run %r: open it with: mlflow ui --backend-store-uri %s (the UI comes with "
                             "pip install mlflow)", name, uri)
            self._client = mlflow.MlflowClient(uri)
            if "mlflow_run_id" in known:
                self.run_id = known["mlflow_run_id"]
            else:
                exp = self._client.get_experiment_by_name("rayssl")
                artifacts = (self.run_dir / MLFLOW_ARTIFACTS).resolve().as_uri() if uri == default else None
                exp_id = exp.experiment_id if exp else self._client.create_experiment("rayssl", artifacts)
                tags = {"mlflow.runName": name}
                if os.environ.get("RAYSSL_MLFLOW_PARENT"):
                    tags["mlflow.parentRunId"] = os.environ["RAYSSL_MLFLOW_PARENT"]
                self.run_id = self._client.create_run(exp_id, tags=tags).info.run_id
                known.update(mlflow_run_id=self.run_id, mlflow_uri=uri)
            if params and not resume:
                from mlflow.entities import Param

                items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
                for i in range(0, len(items), 100):
                    self._client.log_batch(self.run_id, params=items[i:i + 100])
            self._handle = self._client
        else:
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            run_id = known.get("wandb_run_id") or uuid.uuid4().hex[:8]
            self._handle = wandb.init(project=os.environ.get("WANDB_PROJECT", "rayssl"), name=name, id=run_id,
                                      dir=str(self.run_dir), config=params if not resume else None, resume="allow",
                                      reinit="create_new")
            known.update(wandb_run_id=run_id)
        record.write_text(json.dumps(known, indent=1))

    def log(self, metrics: dict, step: int) -> None:
        """The numeric entries of one metric line at ``step``."""
        numbers = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and k != "step"}
        if self.kind == "tensorboard":
            for k, v in numbers.items():
                self._handle.add_scalar(k, v, step)
        elif self.kind == "mlflow":
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numbers.items()])
        elif self.kind == "wandb":
            self._handle.log(numbers, step=step)

    def artifacts(self, paths: list[Path]) -> None:
        """Files of the run (previews, weights, ``result.json``, leaderboards) into the tracked run."""
        paths = [Path(p) for p in paths if Path(p).is_file()]
        if self.kind == "mlflow":
            for p in paths:
                sub = p.parent.relative_to(self.run_dir).as_posix() if p.is_relative_to(self.run_dir) else None
                self._client.log_artifact(self.run_id, str(p), None if sub in (None, ".") else sub)
        elif self.kind == "wandb":
            import wandb

            art = wandb.Artifact(f"{self.name}-files".replace("/", "-"), type="run-files")
            for p in paths:
                art.add_file(str(p), name=p.relative_to(self.run_dir).as_posix() if p.is_relative_to(self.run_dir) else p.name)
            self._handle.log_artifact(art)
        elif self.kind == "tensorboard":
            self._handle.add_text("artifacts", "\n".join(f"    {p}" for p in paths))

    def close(self, finished: bool = True) -> None:
        if self.kind == "tensorboard":
            self._handle.close()
        elif self.kind == "mlflow" and finished:
            self._client.set_terminated(self.run_id)
        elif self.kind == "wandb":
            self._handle.finish()


def track_artifacts(kind: str, files, name: str, relative: list[str]) -> None:
    """On the driver, at the end of a run: its files into the run the workers tracked, and end that run."""
    if kind == "none":
        return
    tracker = Tracker(kind, files.local, name, resume=True)
    tracker.artifacts([files.local / r for r in relative])
    tracker.close(finished=True)
