"""Segmentation (Dice, 95% Hausdorff distance in mm) and multi-label classification (AUC) metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
from torch import Tensor


def dice_hd95(pred: Tensor, target: Tensor, spacing=None, include_background: bool = False,
              hd95: bool = True) -> dict[str, np.ndarray]:
    """Per-case, per-channel Dice and HD95 of binary channel masks (MONAI metrics).

    A channel empty in both prediction and ground truth gets Dice ``nan`` (it does not count in means);
    HD95 is ``nan`` when either mask is empty.

    Args:
        pred: binary ``[N, K, *spatial]``.
        target: binary ``[N, K, *spatial]``, same shape.
        spacing: voxel size in mm (one per spatial axis), or ``None`` for voxel units.
        include_background: keep channel 0 (``False`` for one-hot classes, ``True`` for regions).
        hd95: also compute the 95% Hausdorff distance.

    Returns:
        ``{"dice": [N, K'], "hd95": [N, K']}`` float arrays (``K' = K`` or ``K - 1``).
    """
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    if pred.shape != target.shape or pred.ndim < 3:
        raise ValueError(f"pred {list(pred.shape)} and target {list(target.shape)} must both be [N, K, *spatial]")
    pred, target = pred.float(), target.float()
    dice = DiceMetric(include_background=include_background, reduction="none", ignore_empty=True)(pred, target)
    out = {"dice": dice.cpu().numpy().astype(np.float64)}
    if hd95:
        kwargs = {} if spacing is None else {"spacing": [float(s) for s in spacing]}
        with warnings.catch_warnings():  # MONAI warns for empty masks; those entries become nan below
            warnings.simplefilter("ignore")
            hd = HausdorffDistanceMetric(include_background=include_background, percentile=95,
                                         reduction="none")(pred, target, **kwargs)
        hd = hd.cpu().numpy().astype(np.float64)
        hd[~np.isfinite(hd)] = np.nan
        first = 0 if include_background else 1
        sums_p = pred.flatten(2).sum(-1)[:, first:].cpu().numpy()
        sums_t = target.flatten(2).sum(-1)[:, first:].cpu().numpy()
        hd[(sums_p == 0) | (sums_t == 0)] = np.nan
        out["hd95"] = hd
    return out


def nanmean(values) -> float:
    """Mean over finite values; ``nan`` when there are none (no warning)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def multilabel_auc(y_true, y_score, names: list[str] | None = None) -> dict:
    """Per-finding ROC AUC (scikit-learn) and their mean.

    A finding with a single class in ``y_true`` has no AUC: it is listed in ``skipped`` and left out
    of the mean rather than raising.

    Args:
        y_true: ``[N, K]`` binary targets.
        y_score: ``[N, K]`` scores (logits or probabilities).
        names: ``K`` finding names (default ``class_0`` ...).

    Returns:
        ``{"per_class": {name: auc}, "mean_auc": float, "skipped": [names]}``.
    """
    from sklearn.metrics import roc_auc_score

    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape:
        raise ValueError(f"y_true {list(y_true.shape)} and y_score {list(y_score.shape)} must both be [N, K]")
    names = list(names) if names is not None else [f"class_{k}" for k in range(y_true.shape[1])]
    if len(names) != y_true.shape[1]:
        raise ValueError(f"{len(names)} names for {y_true.shape[1]} columns")
    per, skipped = {}, []
    for k, name in enumerate(names):
        column = y_true[:, k] > 0.5
        if column.all() or not column.any():
            skipped.append(name)
            continue
        per[name] = float(roc_auc_score(column, y_score[:, k]))
    return {"per_class": per, "mean_auc": nanmean(list(per.values())), "skipped": skipped}
