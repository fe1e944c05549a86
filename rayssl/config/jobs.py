"""The jobs' configs: ``JobConfig`` (what pre-training and fine-tuning share) and one config per job
(``jobs/prepare_data.py``, ``pretrain.py``, ``finetune.py``, ``predict.py``; the sweep's is :mod:`.sweep`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayssl.config.base import Strict, check_divisible
from rayssl.config.data import DataConfig, single_source_only
from rayssl.config.model import CorruptionConfig, FinetuneModelConfig, ModelConfig, TaskConfig, resenc_divisor
from rayssl.config.recipes import check_genesis_recipe
from rayssl.config.train import EvalConfig, OptimConfig, RunConfig, ScaleConfig


class PrepareConfig(Strict):
    """``jobs/prepare_data.py``: preprocess a source or a pool once into the volume cache (one file per case)."""

    data: DataConfig = DataConfig()
    out: str | None = None
    """Output folder or ``s3://`` / ``gs://`` URI of the case files and manifest; a re-run into it resumes."""


class JobConfig(Strict):
    """What a training job (pre-training, fine-tuning) holds besides its network: data, optimiser, scale, run."""

    preset: str | None = None
    """The preset the config started from (set by ``--preset``)."""
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    scale: ScaleConfig = ScaleConfig()
    run: RunConfig = RunConfig()
    epochs: int = Field(100, ge=1)
    """Passes over the training cases, each with new crops."""
    batch_size: int = Field(4, ge=1)
    """Per-worker micro-batch."""
    seed: int = 0
    """Seed of the initial weights and of the workers' random draws."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimiser steps (for smoke tests); ``None``: run all epochs."""

    @property
    def total_batch(self) -> int:
        """Samples per optimiser step over all workers (the largest of an elastic ``[min, max]``):
        ``batch_size * optim.grad_accum * workers``, what ``optim.base_lr`` scales with."""
        return self.batch_size * self.optim.grad_accum * self.scale.max_workers


class PretrainConfig(JobConfig):
    """``jobs/pretrain.py``: self pre-training with MAE or Models Genesis."""

    model: ModelConfig = ModelConfig()
    corruption: CorruptionConfig = CorruptionConfig()

    @model_validator(mode="after")
    def _check_pretrain(self) -> "PretrainConfig":
        # Models Genesis needs [0, 1] intensities; with data.recipe=None the source picks the recipe and
        # the driver checks it before Ray starts
        if self.model.method == "genesis" and self.data.recipe is not None:
            check_genesis_recipe(self.data.recipe)
        if self.model.method == "mae":
            check_divisible(self.data.roi, self.model.patch_size, f"model.patch_size={self.model.patch_size}")
        elif self.model.method == "cnn_mae":
            check_divisible(self.data.roi, resenc_divisor(self.model.size), f"a model.size={self.model.size} residual U-Net")
            check_divisible(self.data.roi, self.model.mask_block, f"model.mask_block={self.model.mask_block}")
        elif self.data.spatial_dims == 3:
            check_divisible(self.data.roi, 8, "the Genesis U-Net pools three times")
        return self


class FinetuneConfig(JobConfig):
    """``jobs/finetune.py``: fine-tune a pre-trained (or scratch) network and evaluate it.

    The presets set ``data.sampling: balanced`` and a ``data.test_fold`` for sources without a test split.
    """

    pretrained: str = "none"
    """``none`` (from scratch), an exported ``.safetensors`` or a pre-training run directory."""
    model: FinetuneModelConfig = FinetuneModelConfig()
    task: TaskConfig = TaskConfig()
    eval: EvalConfig = EvalConfig()
    augment: bool = True
    """Flips / rot90 / intensity (3D) or RandAugment (2D), the papers' fine-tuning augmentation."""
    batch_size: int = Field(2, ge=1)
    """Per-worker micro-batch (fine-tuning's default: 2)."""

    @property
    def sw_roi(self) -> tuple[int, ...]:
        """The sliding window of evaluation and prediction: ``eval.roi``, else ``data.roi``."""
        return self.eval.roi or self.data.roi

    @model_validator(mode="after")
    def _check_ft(self) -> "FinetuneConfig":
        single_source_only(self.data, "fine-tuning (its test split is one source's)")
        dims = self.data.spatial_dims
        if self.model.arch in ("unetr", "genesis_unet", "resenc_unet") and dims != 3:
            raise ValueError(f"model.arch={self.model.arch} needs a 3D data.roi, got {list(self.data.roi)}")
        if self.model.arch == "vit_classifier" and self.task.labels not in (None, "multilabel"):
            raise ValueError(f"model.arch=vit_classifier predicts task.labels=multilabel, got {self.task.labels}")
        if self.eval.roi is not None and len(self.eval.roi) != dims:
            raise ValueError(f"eval.roi {list(self.eval.roi)} must have {dims} entries like data.roi")
        by, what = ((8, "the Genesis U-Net pools three times") if self.model.arch == "genesis_unet"
                    else (resenc_divisor(self.model.size), f"a model.size={self.model.size} residual U-Net")
                    if self.model.arch == "resenc_unet"
                    else (self.model.patch_size, f"model.patch_size={self.model.patch_size}"))
        check_divisible(self.data.roi, by, what)
        if self.eval.roi is not None:
            check_divisible(self.eval.roi, by, what, "eval.roi")
        return self


class PredictConfig(Strict):
    """``jobs/predict.py``: segment or classify new cases with fine-tuned models, outputs on each file's grid."""

    model: list[str] = []
    """Fine-tuning run directories (or their ``best.safetensors``); several make an ensemble (mean probabilities)."""
    input: str = ""
    """Any data source spec rayssl reads (folder, CSV, MSD ``test`` list, ``cxr14``); labels are not needed."""
    out: str = "runs/predict"
    """Output folder: ``<case>.nii.gz`` (and ``_prob.nii.gz``), or ``predictions.csv``; ``cases.csv``, ``summary.json``."""
    tta: Literal["none", "flip"] = "none"
    """``flip``: the mean over every flip of the spatial axes (8 in 3D, 2 in 2D), as nnU-Net mirrors."""
    save_probabilities: bool = False
    """Also write ``<case>_prob.nii.gz`` (float32, channels last) on the file's grid."""
    overlap: float | None = Field(None, ge=0.0, lt=1.0)
    """Sliding-window overlap (``None``: the model's ``eval.sw_overlap``)."""
    sw_batch_size: int = Field(4, ge=1)
    actors: int | None = Field(None, ge=1)
    """Model replicas (Ray Data actors); ``None``: one per GPU, else one per ``cpus_per_actor`` CPUs."""
    cpus_per_actor: float = Field(1.0, gt=0)
    use_gpu: bool | None = None
    """``None``: GPUs when the cluster has some."""
    channels: int | None = Field(None, ge=1)
    """Input channels (``None``: the models')."""
    strict: bool = False
    """Stop on the first unusable input instead of quarantining it."""
    allow_outside_root: bool = False
    """See ``data.allow_outside_root``."""
