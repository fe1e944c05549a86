"""What a fine-tuning run predicts (from the config and the source), its loss, and its evaluation cases."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rayssl.config import FinetuneConfig
from rayssl.data.sources import Case, Source
from rayssl.finetune.labels import BRATS_REGIONS, brats_regions


BRATS_RECIPES = ("mri_brats", "mri_genesis")
"""Recipes of BraTS-like MRI: their label maps are trained as the nested tumour regions (``brats_regions``)."""


def label_mode(cfg: FinetuneConfig, source: Source) -> str:
    """``multilabel`` for the classifier, ``brats_regions`` for BraTS-like MRI, else ``multiclass``."""
    if cfg.task.labels is not None:
        mode = cfg.task.labels
    elif cfg.model.arch == "vit_classifier":
        mode = "multilabel"
    else:
        mode = "brats_regions" if (cfg.data.recipe or source.recipe) in BRATS_RECIPES else "multiclass"
    if (mode == "multilabel") != (cfg.model.arch == "vit_classifier"):
        raise ValueError(f"task.labels={mode} does not fit model.arch={cfg.model.arch}")
    return mode


@dataclass(frozen=True)
class TaskSpec:
    """What a fine-tuning run predicts, resolved once from the config and the source."""

    mode: Literal["multiclass", "brats_regions", "multilabel"]
    num_classes: int
    """Output channels (background included for multiclass)."""
    class_names: tuple[str, ...]
    """Names of the scored channels (multiclass: the ``num_classes - 1`` foreground classes)."""
    channels: int
    """Input channels."""
    loss: Literal["dicece", "dice", "bce"]

    @property
    def classification(self) -> bool:
        """Image-level findings (a classifier), not voxel labels."""
        return self.mode == "multilabel"

    @property
    def target_key(self) -> str:
        """The training batch's target column."""
        return "target" if self.classification else "label"

    @property
    def metric(self) -> str:
        """The ``result.json`` metric: mean AUC for classification, mean Dice for segmentation."""
        return "mean_auc" if self.classification else "mean_dice"


def task_spec(cfg: FinetuneConfig, source: Source) -> TaskSpec:
    """The :class:`TaskSpec` of a fine-tuning config on a source.

    Raises:
        ValueError: no class information (set ``task.num_classes``) or a loss that does not fit the task.
    """
    mode = label_mode(cfg, source)
    if mode == "multilabel":
        names = list(source.class_names)
        if cfg.task.num_classes is not None and names and cfg.task.num_classes != len(names):
            raise ValueError(f"task.num_classes={cfg.task.num_classes} but source {cfg.data.source!r} has "
                             f"{len(names)} findings")
        num = cfg.task.num_classes or len(names)
        names = names or [f"class_{k}" for k in range(num or 0)]
    elif mode == "brats_regions":
        num, names = len(BRATS_REGIONS), list(BRATS_REGIONS)
    else:
        num = cfg.task.num_classes or (max(source.labels) + 1 if source.labels else None)
        names = [source.labels.get(k, f"class_{k}") for k in range(1, num or 0)]
    if not num or (mode == "multiclass" and num < 2):
        raise ValueError(f"cannot tell the number of classes of source {cfg.data.source!r}; set task.num_classes")
    loss = cfg.task.loss or {"multiclass": "dicece", "brats_regions": "dice", "multilabel": "bce"}[mode]
    if (loss == "bce") != (mode == "multilabel"):
        raise ValueError(f"task.loss={loss} does not fit task.labels={mode}")
    return TaskSpec(mode, int(num), tuple(n.replace(" ", "_") for n in names), source.channels, loss)


# SelfMedMAE's segmentation losses (lib/trainers/seg_trainer.py build_model; smooth_* from
# configs/unetr_btcv_1gpu.yaml and unetr_msdbrats_1gpu.yaml): squared denominators (V-Net style), no smoothing
# in the numerator and 1e-6 in the denominator, background channel included (MONAI's default, not overridden).
# Where the paper's prose and the released code could differ, the code (what the configs above run) is followed.
DICE_OPTIONS = {"squared_pred": True, "smooth_nr": 0.0, "smooth_dr": 1e-6, "include_background": True}


class SegLoss(nn.Module):
    """DiceCE / Dice on logits ``[N, K, *roi]`` and label maps ``[N, *roi]`` (softmax one-hot or BraTS sigmoid regions).

    The Dice term uses :data:`DICE_OPTIONS` (SelfMedMAE's); ``dice_options`` overrides single entries.
    """

    def __init__(self, mode: str, loss: str, **dice_options):
        super().__init__()
        from monai.losses import DiceCELoss, DiceLoss

        self.mode = mode
        kw = dict(sigmoid=True) if mode == "brats_regions" else dict(softmax=True, to_onehot_y=True)
        kw.update(DICE_OPTIONS, **dice_options)
        self.fn = DiceCELoss(**kw) if loss == "dicece" else DiceLoss(**kw)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        target = brats_regions(label) if self.mode == "brats_regions" else label[:, None].float()
        return self.fn(logits, target)


def build_loss(spec: TaskSpec) -> nn.Module:
    if spec.classification:
        return nn.BCEWithLogitsLoss()
    return SegLoss(spec.mode, spec.loss)


def case_dicts(cases: list[Case]) -> list[dict]:
    return [dataclasses.asdict(c) for c in cases]


def load_eval_cases(cases: list[dict], cfg: FinetuneConfig, recipe: str, channels: int | None = None,
                    source_labels: bool = False) -> list[dict]:
    """Read and preprocess evaluation cases (whole volumes; 2D images centre-cropped to the ROI); with
    ``source_labels`` also each case's label file as it is (``source_label``, to score on the file's grid)."""
    from rayssl.data.pipeline import image_size_2d
    from rayssl.data.preprocess import load_case
    from rayssl.finetune.evaluate import center_crop

    out = []
    for c in cases:
        vol = load_case(Case(**c), recipe, cfg.data.spacing, image_size_2d(cfg.data), channels)
        if cfg.data.spatial_dims == 2:
            vol["image"] = center_crop(vol["image"], cfg.data.roi)
        if source_labels and c.get("label"):
            from rayssl.data.io import read_label

            vol["source_label"] = read_label(c["label"])[0]
        out.append(vol)
    return out
