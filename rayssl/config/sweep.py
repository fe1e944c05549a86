"""``SweepConfig`` (``jobs/tune.py``): the searched ranges, ASHA and the sweep's budget."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rayssl.config.base import Strict
from rayssl.config.search_space import check_space


class ParamRange(Strict):
    """One searched hyper-parameter: a uniform (or log-uniform) range, optionally quantised to ``step``."""

    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)


def _default_space() -> dict[str, ParamRange]:
    return {
        "mask_ratio": ParamRange(low=0.5, high=0.9, step=0.05),
        "layer_decay": ParamRange(low=0.5, high=0.95),
        "drop_path": ParamRange(low=0.0, high=0.3),
        "lr": ParamRange(low=1e-4, high=1e-2, log=True),
    }


class AshaConfig(Strict):
    """ASHA early stopping on the validation metric; time is the fine-tuning epoch."""

    grace_period: int = Field(1, ge=1)
    """Epochs every trial runs before it can be stopped."""
    reduction_factor: float = Field(2.0, gt=1.0)


class SweepConfig(Strict):
    """``jobs/tune.py``: Ray Tune + Optuna search over pre-training and fine-tuning hyper-parameters.

    Each trial fine-tunes ``finetune_preset`` (+ ``finetune`` overrides) from an encoder pre-trained
    with ``pretrain_preset`` (+ ``pretrain`` overrides); both override mappings take dotted keys. Unless
    ``pretrain.data.source`` is given, pre-training uses the fine-tuning data source and its folds, so
    the encoder never sees validation or test cases (self pre-training); a pool (a list of SPECs) that lists the
    fine-tuning source takes its folds too.
    """

    preset: str | None = None
    """The preset the config started from (set by ``--preset``)."""
    task: str = "tiny"
    """Downstream task name: labels the leaderboard."""
    finetune_preset: str = "tiny"
    finetune: dict[str, Any] = {}
    """Overrides of the fine-tuning config, nested or dotted: ``{"epochs": 4, "data": {"roi": [32, 32, 32]}}``."""
    pretrain_preset: str | None = "tiny"
    """``None``: no pre-training (searches fine-tuning parameters of from-scratch runs only)."""
    pretrain: dict[str, Any] = {}
    space: dict[str, ParamRange | None] = Field(default_factory=_default_space)
    """Searched parameters (names in ``rayssl.config.search_space.PARAMS``); a given mapping replaces the defaults,
    overrides merge into a preset's space, and ``space.NAME=null`` removes a parameter."""
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    """``None``: as many as fit next to ``data_cpus`` on the cluster."""
    trial_cpus: float = Field(0.01, gt=0)
    """CPUs held by each trial's driver process (it only waits on its Ray Train workers; Tune needs > 0)."""
    data_cpus: float = Field(1.0, ge=0)
    """CPUs left free for Ray Data next to the training workers of all running trials."""
    seed: int = 0
    """Seed of the TPE sampler."""
    startup_trials: int = Field(4, ge=1)
    """Random trials before TPE starts modelling."""
    asha: AshaConfig = AshaConfig()
    mask_bucket: float = Field(0.05, gt=0, lt=0.5)
    """Mask ratios are rounded to multiples of this before pre-training, so close values share one encoder."""
    store: str | None = None
    """Pre-trained encoder store (``None``: ``<sweep dir>/pretrain_store``); a shared path reuses across sweeps."""
    reuse_pretraining: bool = True
    """``False``: every trial pre-trains its own encoder (for comparison; same results, more compute)."""
    baseline: bool = True
    """Also fine-tune from scratch with the same budget (reference row of the leaderboard)."""
    max_failures: int = Field(1, ge=0)
    """Retries of a failed trial."""
    name: str | None = None
    """Sweep name; re-running with the same name resumes the sweep."""
    storage_path: str = "runs/tune"
    """Where sweeps live (local folder or shared storage)."""
    tracker: Literal["none", "tensorboard", "mlflow", "wandb"] = "none"
    """Log every trial through Ray Tune's logger callbacks (MLflow: one parent run for the sweep with a nested
    run per trial; W&B: one group) and the leaderboards as the sweep's artifacts."""

    @model_validator(mode="after")
    def _check_sweep(self) -> "SweepConfig":
        if any(v is None for v in self.space.values()):
            self.space = {k: v for k, v in self.space.items() if v is not None}
        check_space(self.space)
        return self
