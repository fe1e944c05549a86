"""``DataConfig``: where the volumes come from, how they are preprocessed and cut into patches."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayssl.config.base import Strict
from rayssl.config.recipes import RECIPES, get_recipe

SINGLE_SOURCE_PREFIXES = ("synthetic", "msd", "folder", "csv", "cxr14", "dicom")
"""The SPEC forms of one source (``pool:`` names a pool file)."""


def is_pool_spec(spec: str) -> bool:
    """Whether one SPEC names a pool file: ``pool:FILE``, or a bare path ending in ``.yaml`` / ``.yml`` (no source
    format reads YAML, so such a path is always a pool file)."""
    spec = spec.strip()
    prefix, sep, _ = spec.partition(":")
    if sep and prefix == "pool":
        return True
    if sep and prefix in SINGLE_SOURCE_PREFIXES:
        return False
    return spec.lower().endswith((".yaml", ".yml"))


def single_source_only(data: "DataConfig", job: str) -> None:
    """Raise ``ValueError`` naming ``data.source`` when it is a pool: ``job`` reads one source."""
    if data.is_pool:
        raise ValueError(f"data.source={data.source!r} is a pool of sources, and pools are for pre-training "
                         f"(jobs/pretrain.py); {job} reads one source: give data.source one SPEC")


class DataConfig(Strict):
    """Where the volumes come from, how they are preprocessed and cut into patches."""

    source: str | list[str] = "synthetic:ct:8"
    """``synthetic:ct|mri|cxr[:N[:SEED]]``, ``msd:``/``folder:``/``csv:``/``cxr14:``/``dicom:`` + path, or a path; pre-training: also a pool, ``[SPEC,SPEC,...]`` or ``pool:FILE.yaml``.

    A pool (:mod:`rayssl.data.sources.pool`): a list of SPECs (on the command line
    ``data.source=[msd:/data/Task03_Liver,folder:/archive/ct,dicom:/pacs/export]``; quote an item with a comma,
    ``"folder:IMAGES,LABELS"``), or a pool file whose ``sources:`` entries are ``{source: SPEC, recipe, weight,
    limit, name}``. Fine-tuning, prediction and ``prepare_data`` read one source."""
    recipe: Literal[tuple(RECIPES)] | None = None  # type: ignore[valid-type]
    """Preprocessing recipe; ``None`` picks the source's natural one."""
    spacing: tuple[float, ...] | None = None
    """Target voxel spacing in mm; ``None`` keeps the recipe default."""
    roi: tuple[int, ...] = (96, 96, 96)
    """Patch (sub-volume) shape: 3 ints for volumes, 2 for images."""
    patches_per_volume: int = Field(4, ge=1)
    """New random crops of each case per epoch."""
    sampling: Literal["random", "balanced", "foreground", "classes", "genesis", "tissue", "grid"] = "random"
    """``balanced``: ``pos_fraction`` of the crops centred on a labelled voxel, the rest anywhere (MONAI
    ``RandCropByPosNegLabel``); ``foreground``: the same, each centred crop on a foreground class drawn uniformly
    (nnU-Net's foreground oversampling: small structures as often as large ones, and crops that see the
    background); ``classes``: every crop centred on a class drawn uniformly, background included (MONAI
    ``RandCropByLabelClasses``); ``genesis``: the Models Genesis chest CT rule, lung-dominant crops (preset
    ``genesis_chest_ct``, prepare ``genesis_ct``); ``tissue``: crops mostly above the air threshold, for CT
    without lungs such as the synthetic abdominal phantoms (``tiny_genesis``, and ``genesis_btcv``'s self pre-training on
    BTCV); see :func:`rayssl.data.patches.sample_patches`."""
    pos_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """``balanced`` / ``foreground`` sampling: fraction of patches centred on a labelled voxel."""
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
    keep_volumes: Literal["auto"] | bool = "auto"
    """``auto``: keep the preprocessed training volumes in Ray's object store for the run (preprocessed once) while
    they fit ``kept_budget`` of it, else prepare them into the volume cache (``<run.storage_path>/data/...``,
    resumable) and stream each worker's share from it every epoch; the run logs which and why.
    ``true``: always keep them (Ray spills to disk when the store is full). ``false``: preprocess them again every
    epoch. Not used with ``cache_dir`` (the cache is streamed)."""
    kept_budget: float = Field(0.3, ge=0.0, le=1.0)
    """The share of the cluster's object store the kept volumes may fill (``keep_volumes=auto``); the rest serves
    Ray Data, checkpoints and the workers' transfers."""
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
    """The volume cache written by ``prepare_data`` (one Arrow file per case); when set, training streams it."""
    synthetic_dir: str | None = None
    """Where synthetic phantoms are written (default ``~/.cache/rayssl/synthetic``)."""

    @property
    def spatial_dims(self) -> int:
        """2 (images) or 3 (volumes): the axes of ``roi``, the 2D / 3D switch of every job."""
        return len(self.roi)

    @property
    def is_pool(self) -> bool:
        """Whether ``source`` is a pool of sources (a list of SPECs or a pool file), not one source."""
        return isinstance(self.source, list) or is_pool_spec(self.source)

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        self._check_pool()
        if self.spatial_dims not in (2, 3) or min(self.roi) < 1:
            raise ValueError(f"roi must be 2 or 3 positive ints, got {self.roi}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be 3 positive mm values, got {self.spacing}")
        if self.val_fold != "all" and not 0 <= self.val_fold < self.folds:
            raise ValueError(f"val_fold={self.val_fold} must be in 0..folds-1 (folds={self.folds}) or 'all'")
        if self.test_fold is not None and (self.test_fold >= self.folds or self.test_fold == self.val_fold):
            raise ValueError(f"test_fold={self.test_fold} must be < folds and differ from val_fold")
        margin = self.genesis_margin
        if margin is not None and (len(margin) != self.spatial_dims or min(margin) < 0):
            raise ValueError(f"genesis_margin must be {self.spatial_dims} non-negative ints like roi, got {margin}")
        if self.sampling == "genesis" and self.genesis_threshold is None:
            if self.recipe is None or get_recipe(self.recipe).window is None:
                raise ValueError(
                    f"sampling=genesis places genesis_hu={self.genesis_hu:g} HU with data.recipe's HU window, but "
                    f"data.recipe={self.recipe!r} has none: set data.recipe (e.g. ct_genesis) or data.genesis_threshold"
                )
        return self

    def _check_pool(self) -> None:
        if isinstance(self.source, list):
            if not self.source:
                raise ValueError("data.source=[]: a pool lists at least one SPEC")
            for i, spec in enumerate(self.source):
                if not spec.strip():
                    raise ValueError(f"data.source[{i}] is empty: every item of a pool is a SPEC")
                if is_pool_spec(spec):
                    raise ValueError(f"data.source[{i}]={spec!r} is a pool file: a pool lists sources, not pools")
        if not self.is_pool:
            return
        if self.train_cases is not None:
            raise ValueError(f"data.train_cases={self.train_cases} draws the labelled cases of one source; in a pool, "
                             "give a source's entry a limit (a pool file's limit: N)")
        if self.cache_dir is not None:
            raise ValueError(f"data.cache_dir={self.cache_dir!r} holds one source's volumes (prepare_data); a pool "
                             "(data.source) is read from its sources: drop one of them")
