"""The training runtime's schemas, shared by the jobs: optimiser and schedule, Ray Train scale, the run
directory, evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayssl.config.base import Strict


class OptimConfig(Strict):
    """Optimiser and schedule. ``lr = base_lr * total_batch / 256`` unless ``lr`` is given."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    """torch optimiser (Models Genesis: SGD)."""
    base_lr: float = Field(1.5e-4, gt=0)
    """Learning rate per 256 samples of total batch (the MAE scaling rule)."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate; overrides ``base_lr``."""
    min_lr: float = Field(0.0, ge=0)
    """Floor of the cosine schedule."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (MAE / SelfMedMAE: 0.9, 0.95)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    nesterov: bool = False
    """SGD with Nesterov momentum (nnU-Net, nnssl)."""
    weight_decay: float = Field(0.05, ge=0)
    """AdamW weight decay of weight matrices."""
    schedule: Literal["cosine", "step", "constant", "poly"] = "cosine"
    """Learning-rate schedule after the warm-up (``poly``: ``(1 - progress) ** 0.9``, nnU-Net's and nnssl's PolyLR)."""
    warmup_epochs: float = Field(1.0, ge=0)
    """Linear warm-up, in epochs."""
    step_epochs: int = Field(10, ge=1)
    """``step`` schedule: halve the lr every this many epochs (Models Genesis)."""
    step_gamma: float = Field(0.5, gt=0, le=1)
    """``step`` schedule: the factor every ``step_epochs``."""
    grad_clip: float | None = Field(None, gt=0)
    """Clip the gradient norm to this (``None``: no clipping)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimiser step."""


class ScaleConfig(Strict):
    """Ray Train workers and DeepSpeed. ``num_workers`` may be ``[min, max]`` for elastic runs."""

    num_workers: int | tuple[int, int] = 1
    """Ray Train workers, or ``[min, max]`` to train elastically."""
    use_gpu: bool | None = None
    """``None``: use GPUs if the cluster has any."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs each worker reserves (and torch threads it uses)."""
    gpus_per_worker: float = Field(1.0, ge=0)
    """GPUs each worker reserves when training on GPUs."""
    zero_stage: int = Field(0, ge=0, le=3)
    """DeepSpeed ZeRO stage (0-3)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """``auto``: bf16 on GPU, fp32 on CPU."""
    compile: Literal["auto", "off", "default", "reduce-overhead", "max-autotune"] = "auto"
    """``torch.compile`` mode of the network (``fullgraph=True``); ``reduce-overhead`` and ``max-autotune`` add
    CUDA graphs. ``auto``: ``default`` on GPU, ``off`` on CPU and under ZeRO-3 (its parameter hooks)."""

    @property
    def max_workers(self) -> int:
        """The number of workers, or the largest of an elastic ``[min, max]``."""
        w = self.num_workers
        return w[1] if isinstance(w, tuple) else w

    @model_validator(mode="after")
    def _check(self) -> "ScaleConfig":
        if self.compile not in ("auto", "off") and self.zero_stage == 3:
            raise ValueError(f"compile={self.compile} needs zero_stage 0-2: ZeRO-3 gathers each layer's weights in "
                             "hooks that a full-graph compile cannot trace; use compile=off or auto")
        w = self.num_workers
        if isinstance(w, tuple) and not (1 <= w[0] <= w[1]):
            raise ValueError(f"num_workers=[min, max] needs 1 <= min <= max, got {list(w)}")
        if isinstance(w, int) and w < 1:
            raise ValueError(f"num_workers must be >= 1, got {w}")
        return self


class RunConfig(Strict):
    """Where a run lives and how it is checkpointed."""

    name: str | None = None
    """Run name; re-running with the same name resumes from its last checkpoint."""
    storage_path: str = "runs"
    """Local directory or ``s3://`` / ``gs://`` URI."""
    checkpoint_every: int = Field(100, ge=1)
    """Checkpoint every this many optimiser steps (and at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept (the newest)."""
    max_failures: int = Field(2, ge=0)
    """Restarts from the last checkpoint after a worker or node failure."""
    log_every: int = Field(10, ge=1)
    """Report the loss every this many optimiser steps."""
    preview_every: int = Field(5, ge=0)
    """Write reconstruction previews every this many epochs (0: only at the end)."""
    tracker: Literal["none", "tensorboard", "mlflow", "wandb"] = "none"
    """Log the config, every metric line and the artifacts to TensorBoard, MLflow (``MLFLOW_TRACKING_URI``, else
    SQLite ``mlflow.db`` in the run directory) or W&B (offline unless ``WANDB_MODE`` is set); optional extras."""


class EvalConfig(Strict):
    """Validation / test evaluation and prediction export."""

    val_every: int = Field(1, ge=1)
    """Validate every this many epochs (and after the last one)."""
    sw_overlap: float = Field(0.5, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(4, ge=1)
    roi: tuple[int, ...] | None = None
    """Sliding-window ROI (``None``: ``data.roi``)."""
    hd95: bool = True
    save_predictions: int = Field(2, ge=0)
    """Write NIfTI predictions of this many test cases (all with a large number)."""
    overlays: int = Field(3, ge=0)
    """PNG overlay previews of this many test cases."""
