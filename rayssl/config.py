"""Typed job configs: presets (YAML in the package), YAML files, ``key=value`` overrides.

Every job has one config class. ``load_config`` merges, in order, the preset, an
optional YAML file and command-line overrides (dotted keys for nesting), then
validates the result. An unknown key or a value of the wrong type raises
:class:`ConfigError` naming the key, before any Ray worker starts.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rayssl.data.recipes import RECIPES, check_genesis_recipe, get_recipe
from rayssl.search_space import check_space


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


def check_divisible(roi, by: int, what: str, key: str = "data.roi") -> None:
    """Raise ``ValueError`` naming ``key`` unless every axis of ``roi`` is a multiple of ``by``."""
    bad = [int(s) for s in roi if s < by or s % by]
    if bad:
        raise ValueError(f"{key}={list(roi)}: every axis must be a multiple of {by} ({what}); "
                         f"e.g. {[max(by, round(s / by) * by) for s in roi]}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class DataConfig(Strict):
    """Where the volumes come from, how they are preprocessed and cut into patches."""

    source: str = "synthetic:ct:8"
    """``synthetic:ct|mri|cxr[:N[:SEED]]``, a path (auto-detected), or ``msd:``/``folder:``/``csv:``/``cxr14:`` + path."""
    recipe: Literal[tuple(RECIPES)] | None = None  # type: ignore[valid-type]
    """Preprocessing recipe; ``None`` picks the source's natural one."""
    spacing: tuple[float, ...] | None = None
    """Target voxel spacing in mm; ``None`` keeps the recipe default."""
    roi: tuple[int, ...] = (96, 96, 96)
    """Patch (sub-volume) shape: 3 ints for volumes, 2 for images."""
    patches_per_volume: int = Field(4, ge=1)
    """New random crops of each case per epoch."""
    sampling: Literal["random", "balanced", "classes", "genesis", "tissue", "grid"] = "random"
    """``genesis``: the Models Genesis chest CT rule, lung-dominant crops (preset ``genesis_chest_ct``,
    prepare ``genesis_ct``); ``tissue``: crops mostly above the air threshold, for CT without lungs such
    as the synthetic abdominal phantoms (``tiny_genesis``, and ``genesis_btcv``'s self pre-training on
    BTCV); see :func:`rayssl.data.patches.sample_patches`."""
    pos_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """``balanced`` sampling: fraction of patches centred on a labelled voxel."""
    air_threshold: float = 0.15
    """``tissue`` sampling: intensity (after windowing) at or below which a voxel counts as air."""
    min_tissue_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """``tissue`` sampling: reject crops with a smaller fraction of non-air voxels."""
    genesis_hu: float = -150.0
    """``genesis`` sampling: HU at or above which a voxel counts as dense (not lung), placed on the
    [0, 1] scale by ``data.recipe``'s window (Models Genesis ``HU_thred``; ``ct_genesis``: 0.425)."""
    genesis_threshold: float | None = None
    """``genesis`` sampling: that threshold given directly on the intensity scale after preprocessing
    (overrides ``genesis_hu``; needed for a recipe without an HU window)."""
    genesis_max_fraction: float = Field(0.15, ge=0.0, le=1.0)
    """``genesis`` sampling: reject crops whose depth-weighted fraction of dense voxels is larger
    (Models Genesis ``lung_max``)."""
    genesis_margin: tuple[int, ...] | None = None
    """``genesis`` sampling: least distance in voxels of a crop from the volume's borders, per spatial
    axis, shrunk on an axis too short for it; ``None``: none. ``genesis_chest_ct`` and ``genesis_ct``
    use the reference's ``[100, 100, 30]`` (``len_border``, ``len_border_z``, at LUNA16's native spacing)."""
    grid_overlap: float = Field(0.0, ge=0.0, lt=1.0)
    """``grid`` sampling: overlap of neighbouring tiles."""
    flip_prob: float = Field(0.0, ge=0.0, le=1.0)
    """Flip each training crop along each spatial axis (2D: the horizontal axis) with this probability;
    drawn anew every epoch with the crop (SelfMedMAE's 3D MAE pre-training: 0.2)."""
    keep_volumes: bool = True
    """Keep the preprocessed training volumes in Ray's object store for the run (preprocessed once; Ray
    spills them to disk when the store is full). ``False`` streams them, preprocessing every epoch again.
    Not used with ``cache_dir`` (the cache is streamed from disk every epoch)."""
    splits: list[Literal["train", "val", "test"]] = ["train"]
    """Which splits to emit patches for."""
    folds: int = Field(5, ge=2)
    """Folds of the seeded k-fold split by subject (sources without their own split lists)."""
    val_fold: int | Literal["all"] = 0
    """The fold that validates; ``all`` (fine-tuning): cross-validation, one run per fold (see ``finetune``)."""
    test_fold: int | None = None
    """Carve a labelled test split out of the training cases (for sources without one)."""
    train_cases: int | None = Field(None, ge=1)
    """Keep only this many training cases, a subset drawn with ``subset_seed`` (e.g. the labelled cases
    of a label-efficiency study); the other training cases are left out of the run. ``None``: all."""
    subset_seed: int = 0
    """Seed of the ``train_cases`` subset."""
    seed: int = 0
    """Seed of the k-fold split and of every case's crops (with the case and the epoch)."""
    strict: bool = False
    """Turn any quarantined input into an error."""
    channels: int | None = Field(None, ge=1)
    """Input channels every case must have; ``None``: the source's (MSD: its ``modality`` entries; folder and
    CSV: the most common count among the files' headers). A case with another count is quarantined."""
    allow_outside_root: bool = False
    """Read files a manifest (``dataset.json``, a CSV, ``Data_Entry_2017.csv``) or a symlink places outside the
    source's folder (``..``, absolute paths, other URIs). Off: they are quarantined as ``outside the dataset
    root`` before anything reads them."""
    patch_dtype: Literal["float32", "float16"] = "float32"
    """dtype of the preprocessed volumes (float16 halves memory and cache size)."""
    cache_dir: str | None = None
    """Preprocessed volumes written by ``prepare_data`` (Parquet); when set, training crops from them."""
    synthetic_dir: str | None = None
    """Where synthetic phantoms are written (default ``~/.cache/rayssl/synthetic``)."""

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if len(self.roi) not in (2, 3) or min(self.roi) < 1:
            raise ValueError(f"roi must be 2 or 3 positive ints, got {self.roi}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be 3 positive mm values, got {self.spacing}")
        if self.val_fold != "all" and not 0 <= self.val_fold < self.folds:
            raise ValueError(f"val_fold={self.val_fold} must be in 0..folds-1 (folds={self.folds}) or 'all'")
        if self.test_fold is not None and (self.test_fold >= self.folds or self.test_fold == self.val_fold):
            raise ValueError(f"test_fold={self.test_fold} must be < folds and differ from val_fold")
        if self.genesis_margin is not None and (len(self.genesis_margin) != len(self.roi) or min(self.genesis_margin) < 0):
            raise ValueError(f"genesis_margin must be {len(self.roi)} non-negative ints like roi, got {self.genesis_margin}")
        if self.sampling == "genesis" and self.genesis_threshold is None:
            if self.recipe is None or get_recipe(self.recipe).window is None:
                raise ValueError(
                    f"sampling=genesis places genesis_hu={self.genesis_hu:g} HU with data.recipe's HU window, but "
                    f"data.recipe={self.recipe!r} has none: set data.recipe (e.g. ct_genesis) or data.genesis_threshold"
                )
        return self


class PrepareConfig(Strict):
    """``jobs/prepare_data.py``: run the data pipeline and cache patches as Parquet."""

    data: DataConfig = DataConfig()
    out: str | None = None
    """Output directory or ``s3://`` / ``gs://`` URI of the Parquet shards and manifest."""
    rows_per_file: int = Field(4, ge=1)
    """Preprocessed volumes per Parquet file."""


# --------------------------------------------------------------------------- loading


def preset_names(job: str) -> list[str]:
    folder = resources.files("rayssl") / "presets" / job
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def merge(base: dict, update: dict) -> dict:
    """``update`` merged into a copy of ``base``, nested mappings key by key."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _dotted(key: str, value: Any, origin: str) -> dict:
    """``("data.roi", v)`` -> ``{"data": {"roi": v}}``."""
    if not isinstance(key, str) or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"{origin}: expected a dotted config key such as data.roi, got {key!r}")
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def parse_override(item: str) -> dict:
    """``"data.roi=[64,64,32]"`` -> ``{"data": {"roi": [64, 64, 32]}}`` (values parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r}: expected key=value with a dotted key, e.g. data.roi=[64,64,32]")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return _dotted(key, value, f"override {item!r}")


def nest(overrides: dict[str, Any]) -> dict:
    """``{"data.roi": [32, 32, 32], "epochs": 2}`` -> ``{"data": {"roi": [...]}, "epochs": 2}`` (nested input kept)."""
    out: dict = {}
    for key, value in overrides.items():
        out = merge(out, _dotted(key, nest(value) if isinstance(value, dict) else value, "override key"))
    return out


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the (nested) config model that holds ``loc``'s last key."""
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        cls = sub
    return list(cls.model_fields)


def _format_errors(err: ValidationError, cls: type[BaseModel] | None = None) -> str:
    import difflib

    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<config>"
        if e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(e["loc"][-1]), _fields_at(cls, e["loc"]) if cls else [], n=1)
            hint = f"; did you mean {'.'.join([*map(str, e['loc'][:-1]), near[0]])}?" if near else ""
            lines.append(f"  {key}: unknown key{hint}")
        elif e["type"] == "value_error":  # a validator's check: its message names the keys
            lines.append(f"  {key}: {e['msg'].removeprefix('Value error, ')}" if e["loc"] else
                         f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def build_config(cls: type[BaseModel], data: dict, origin: str = "config") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid {origin}:\n{_format_errors(err, cls)}") from None


def _preset(job: str, name: str, chain: tuple[str, ...] = ()) -> dict:
    """A shipped preset's values; a preset whose YAML names ``base: OTHER`` is OTHER's values with its own merged over."""
    names = preset_names(job)
    if name not in names:
        raise ConfigError(f"unknown {job} preset {name!r}; available: {', '.join(names) or 'none'}")
    if name in chain:
        raise ConfigError(f"{job} presets {' -> '.join((*chain, name))}: a preset cannot be its own base")
    data = _read_yaml((resources.files("rayssl") / "presets" / job / f"{name}.yaml").read_text(), f"preset {name!r}")
    base = data.pop("base", None)
    return merge(_preset(job, str(base), (*chain, name)), data) if base is not None else data


def load_config(
    cls: type[BaseModel],
    job: str,
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Any:
    """Build a validated config of type ``cls``.

    Args:
        cls: the job's config class, e.g. :class:`PrepareConfig`.
        job: the preset folder, e.g. ``"pretrain"``.
        preset: name of a YAML preset shipped in ``rayssl/presets/<job>/``.
        file: a YAML file merged over the preset.
        overrides: ``key=value`` strings merged last; dotted keys address nested fields.

    Raises:
        ConfigError: unknown preset, unreadable file, unknown key or wrong value type.
    """
    data: dict = {}
    origin = []
    if preset is not None:
        data = _preset(job, preset)
        origin.append(f"preset {preset!r}")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = merge(data, _read_yaml(path.read_text(), str(path)))
        origin.append(str(path))
    for item in overrides:
        data = merge(data, parse_override(item))
    if overrides:
        origin.append("overrides")
    return build_config(cls, data, f"{job} config ({' + '.join(origin) or 'defaults'})")


def config_keys(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, first line of its description)`` of every field, nested ones included."""
    out = []
    for name, field in cls.model_fields.items():
        key, ann = f"{prefix}{name}", field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += config_keys(ann, f"{key}.")
            continue
        kind = getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann).replace("typing.", "")
        default = field.get_default(call_default_factory=True)
        doc = (field.description or "").strip().split("\n")[0]
        out.append((key, kind or str(ann), json.dumps(default, default=str) if default is not None else "null", doc))
    return out


def dump_config(cfg: BaseModel) -> dict:
    """A JSON/YAML-serialisable dict of ``cfg`` that ``build_config`` accepts back."""
    return cfg.model_dump(mode="json")


# --------------------------------------------------------------------------- pre-training


def resenc_divisor(size: str) -> int:
    """What the input sides of a residual U-Net of ``size`` must divide by (its downsamplings; models/resenc_unet.py)."""
    return {"tiny": 8, "small": 16, "base": 32, "large": 32}[size]


class ModelConfig(Strict):
    """The network: a masked autoencoder (2D/3D ViT), the Models Genesis U-Net, or a residual U-Net pre-trained by
    masked image modelling."""

    method: Literal["mae", "genesis", "cnn_mae"] = "mae"
    """``mae`` (masked autoencoder, ViT), ``genesis`` (Models Genesis U-Net) or ``cnn_mae`` (masked image modelling
    of a whole residual-encoder U-Net, as nnssl)."""
    size: Literal["tiny", "small", "base", "large"] = "base"
    """Network size: the ViT encoder's (mae) or the residual U-Net's (cnn_mae; large: nnU-Net's ResEnc-L)."""
    patch_size: int = Field(16, ge=2)
    """ViT patch side in voxels (16 in the paper); data.roi must be a multiple."""
    decoder_embed_dim: int = Field(384, ge=6)
    """MAE decoder width (384 in SelfMedMAE's 3D configs)."""
    decoder_depth: int = Field(8, ge=1)
    """MAE decoder blocks."""
    decoder_num_heads: int = Field(12, ge=1)
    """MAE decoder attention heads."""
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0)
    """Fraction of patches the MAE masks (cnn_mae: of the mask_block-sided blocks)."""
    mask_block: int = Field(16, ge=1)
    """cnn_mae: side of the masked blocks in voxels (nnssl: 16); data.roi must divide by it."""
    sparse: bool = False
    """cnn_mae: the Spark3D variant, re-applying the mask after every encoder stage."""
    norm_pix_loss: bool = False
    """Regress each masked patch normalised by its own mean and variance (SelfMedMAE always does)."""
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    """Encoder stochastic depth during pre-training."""
    unet_base_channels: int = Field(32, ge=1)
    """Genesis U-Net width of the first convolution (32 in the paper)."""
    unet_norm: Literal["batch", "instance", "group"] = "batch"
    """Genesis U-Net normalisation (the paper: batch, with batch statistics in eval too)."""


class CorruptionConfig(Strict):
    """Models Genesis corruption probabilities (paper defaults), drawn on the training worker."""

    flip_prob: float = Field(0.4, ge=0.0, le=1.0)
    """Probability of each of up to three flips."""
    shuffle_prob: float = Field(0.5, ge=0.0, le=1.0)
    """Probability of local pixel shuffling."""
    nonlinear_prob: float = Field(0.9, ge=0.0, le=1.0)
    """Probability of the non-linear (Bezier) intensity transform."""
    paint_prob: float = Field(0.9, ge=0.0, le=1.0)
    """Probability of in- or out-painting."""
    inpaint_rate: float = Field(0.2, ge=0.0, le=1.0)
    """Share of the painting that is in-painting (the rest is out-painting)."""


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


class PretrainConfig(Strict):
    """``jobs/pretrain.py``: self pre-training with MAE or Models Genesis."""

    preset: str | None = None
    """The preset the config started from (set by ``--preset``)."""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    corruption: CorruptionConfig = CorruptionConfig()
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
        elif len(self.data.roi) == 3:
            check_divisible(self.data.roi, 8, "the Genesis U-Net pools three times")
        return self


# --------------------------------------------------------------------------- fine-tuning


class FinetuneModelConfig(Strict):
    """The downstream network: UNETR (3D seg), Genesis U-Net (3D seg) or a ViT classifier (2D)."""

    arch: Literal["unetr", "genesis_unet", "resenc_unet", "vit_classifier"] = "unetr"
    size: Literal["tiny", "small", "base", "large"] = "base"
    """ViT encoder size (UNETR, classifier) or residual U-Net size (resenc_unet)."""
    patch_size: int = Field(16, ge=2)
    drop_path: float = Field(0.1, ge=0.0, lt=1.0)
    feature_size: int = Field(16, ge=1)
    """UNETR decoder width."""
    hidden_blocks: list[int] | None = None
    """UNETR skip connections: increasing 1-based encoder blocks (``None``: 4, 7, 10 for depth 12 and
    patch 16, MONAI's ``hidden_states_out[3], [6], [9]``; ``models.unetr.default_hidden_blocks`` otherwise)."""
    pool: Literal["cls", "mean"] = "cls"
    """Classifier: the cls token or the mean of the patch tokens."""
    unet_base_channels: int = Field(32, ge=1)
    unet_norm: Literal["batch", "instance", "group"] = "batch"
    layer_decay: float = Field(0.75, gt=0.0, le=1.0)
    """Layer-wise lr decay of the ViT encoder (1: none)."""


class TaskConfig(Strict):
    """What is predicted and how it is scored."""

    labels: Literal["multiclass", "brats_regions", "multilabel"] | None = None
    """``multiclass`` (softmax, one-hot, DiceCE), ``brats_regions`` (TC/WT/ET sigmoid channels, Dice),
    ``multilabel`` (2D findings, BCE); ``None`` picks from the architecture and the source."""
    num_classes: int | None = Field(None, ge=1)
    """Output channels; ``None``: from the source's label names (background included for multiclass)."""
    loss: Literal["dicece", "dice", "bce"] | None = None
    """``None``: DiceCE for multiclass, Dice for BraTS regions, BCE for multilabel."""


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


class FinetuneConfig(Strict):
    """``jobs/finetune.py``: fine-tune a pre-trained (or scratch) network and evaluate it."""

    preset: str | None = None
    """The preset the config started from (set by ``--preset``)."""
    pretrained: str = "none"
    """``none`` (from scratch), an exported ``.safetensors`` or a pre-training run directory."""
    data: DataConfig = DataConfig()
    """The presets set ``sampling: balanced`` and a ``test_fold`` for sources without a test split."""
    model: FinetuneModelConfig = FinetuneModelConfig()
    task: TaskConfig = TaskConfig()
    optim: OptimConfig = OptimConfig()
    scale: ScaleConfig = ScaleConfig()
    run: RunConfig = RunConfig()
    eval: EvalConfig = EvalConfig()
    augment: bool = True
    """Flips / rot90 / intensity (3D) or RandAugment (2D), the papers' fine-tuning augmentation."""
    epochs: int = Field(100, ge=1)
    """Passes over the training cases, each with new crops."""
    batch_size: int = Field(2, ge=1)
    seed: int = 0
    """Seed of the initial weights and of the workers' random draws."""
    max_steps: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_ft(self) -> "FinetuneConfig":
        dims = len(self.data.roi)
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


# --------------------------------------------------------------------------- prediction


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


# --------------------------------------------------------------------------- hyper-parameter search


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
    the encoder never sees validation or test cases (self pre-training).
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
    """Searched parameters (names in ``rayssl.tune.space.PARAMS``); a given mapping replaces the defaults,
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
