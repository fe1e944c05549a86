"""Whole-volume evaluation (MONAI sliding-window inference), classification scoring, and prediction export."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rayssl.finetune.labels import discretise, to_channels, to_label_map
from rayssl.finetune.metrics import dice_hd95, multilabel_auc, nanmean
from rayssl.viz import label_axes, pyplot, save_figure


@torch.no_grad()
def predict_volume(model: nn.Module, image: np.ndarray | torch.Tensor, roi, overlap: float = 0.5,
                   sw_batch_size: int = 4, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits ``[1, K, *spatial]`` of a whole volume ``[C, *spatial]`` (Gaussian-weighted sliding window)."""
    from monai.inferers import sliding_window_inference

    dtype = next(model.parameters()).dtype if any(True for _ in model.parameters()) else torch.float32
    x = torch.as_tensor(np.asarray(image), dtype=dtype, device=device)[None]  # bf16 under a bf16 engine
    was_training = model.training
    model.eval()
    try:
        out = sliding_window_inference(x, tuple(roi), sw_batch_size, model, overlap=overlap, mode="gaussian")
    finally:
        model.train(was_training)
    return torch.as_tensor(out).as_subclass(torch.Tensor).float().cpu()


def foreground_fraction(channels: torch.Tensor, multiclass: bool) -> float:
    """The fraction of voxels of a one-hot ``[1, C, *spatial]`` map in any foreground channel (multiclass:
    channel 0 is the background; regions: every channel is foreground)."""
    fg = channels[:, 1:] if multiclass else channels
    return float(fg.bool().any(1).float().mean()) if fg.shape[1] else 0.0


def evaluate_segmentation(model: nn.Module, volumes: list[dict], mode: str, num_classes: int, class_names: list[str],
                          roi, overlap: float = 0.5, sw_batch_size: int = 4, hd95: bool = True,
                          device: torch.device | str = "cpu", keep: int = 0, source_grid: bool = False) -> dict:
    """Dice (and HD95 in mm) per case and class over whole volumes.

    Args:
        model: the segmentation network.
        volumes: ``load_case`` dicts with ``image``, ``label``, ``spacing``, ``affine``, ``case_id`` (and, for
            ``source_grid``, ``source_label``, ``source_affine``, ``source_shape``).
        mode: ``multiclass`` (background excluded from the scores) or ``brats_regions``.
        num_classes: output channels.
        class_names: names of the scored channels (``num_classes - 1`` for multiclass).
        roi, overlap, sw_batch_size: sliding-window settings.
        hd95: compute the 95% Hausdorff distance (slow on large volumes).
        device: where inference runs.
        keep: also return the predicted label maps of the first ``keep`` cases.
        source_grid: score on each file's own grid, the way a reader compares with the label file: the
            prediction is mapped back (:func:`rayssl.data.geometry.to_source_grid`, nearest) and compared with
            the file's label at the file's spacing. ``False``: on the preprocessed grid (validation).

    Returns:
        ``{"rows": [per-case dicts], "mean_dice", "mean_hd95", "dice_<class>", "hd95_<class>", "foreground" (the
        fraction of voxels predicted foreground),
        "predictions": {case_id: uint8 label map on the grid scored}, "previews": {case_id: label map on the
        preprocessed grid}}``.
    """
    from rayssl.data.geometry import to_source_grid
    from rayssl.data.preprocess import affine_spacing

    multiclass = mode == "multiclass"
    rows, predictions, previews = [], {}, {}
    for i, vol in enumerate(volumes):
        logits = predict_volume(model, vol["image"], roi, overlap, sw_batch_size, device)
        pred = discretise(logits, mode)
        labels, spacing = vol["label"], vol.get("spacing")
        if source_grid:
            previews[vol["case_id"]] = to_label_map(pred, mode)[0].numpy()
            back = to_source_grid(previews[vol["case_id"]][None], vol["affine"], vol["source_affine"],
                                  vol["source_shape"], mode="nearest")
            pred = to_channels(torch.as_tensor(back).long(), mode, num_classes)
            labels, spacing = vol["source_label"], affine_spacing(vol["source_affine"])
        target = to_channels(torch.as_tensor(np.asarray(labels))[None].long(), mode, num_classes)
        scores = dice_hd95(pred, target, spacing, include_background=not multiclass, hd95=hd95)
        row = {"case_id": vol["case_id"], "split": vol.get("split", "")}
        for k, name in enumerate(class_names):
            row[f"dice_{name}"] = float(scores["dice"][0, k])
            if hd95:
                row[f"hd95_{name}"] = float(scores["hd95"][0, k])
        row["mean_dice"] = nanmean(scores["dice"][0])
        row["foreground"] = foreground_fraction(pred, multiclass)  # a degenerate model predicts 0 (or 1)
        if hd95:
            row["mean_hd95"] = nanmean(scores["hd95"][0])
        rows.append(row)
        if i < keep:
            predictions[vol["case_id"]] = to_label_map(pred, mode)[0].numpy()
            previews.setdefault(vol["case_id"], predictions[vol["case_id"]])
    summary = {"rows": rows, "predictions": predictions, "previews": {k: previews[k] for k in predictions}}
    keys = [k for k in (rows[0] if rows else {}) if k.startswith(("dice_", "hd95_", "mean_", "foreground"))]
    for key in keys:
        summary[key] = nanmean([r[key] for r in rows])
    return summary


@torch.no_grad()
def evaluate_classification(model: nn.Module, images: list[dict], class_names: list[str], batch_size: int = 16,
                            device: torch.device | str = "cpu") -> dict:
    """Per-finding AUC and mean AUC; ``images`` are dicts with ``image`` ``[C, H, W]``, ``target`` ``[K]``, ``case_id``."""
    was_training = model.training
    model.eval()
    scores = []
    try:
        for start in range(0, len(images), batch_size):
            x = torch.stack([torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32) for d in images[start:start + batch_size]])
            dtype = next(model.parameters()).dtype if any(True for _ in model.parameters()) else torch.float32
            scores.append(torch.sigmoid(model(x.to(device=device, dtype=dtype)).float()).cpu())
    finally:
        model.train(was_training)
    y_score = torch.cat(scores).numpy() if scores else np.zeros((0, len(class_names)))
    y_true = np.stack([np.asarray(d["target"], np.float32) for d in images])
    auc = multilabel_auc(y_true, y_score, class_names)
    rows = [{"case_id": d["case_id"], "split": d.get("split", ""),
             **{f"score_{n}": float(s) for n, s in zip(class_names, y_score[i])},
             **{f"target_{n}": int(t) for n, t in zip(class_names, y_true[i])}} for i, d in enumerate(images)]
    return {"rows": rows, "mean_auc": auc["mean_auc"], "skipped": auc["skipped"],
            **{f"auc_{n}": v for n, v in auc["per_class"].items()}}


def center_crop(image: np.ndarray, roi) -> np.ndarray:
    """Crop ``[C, *spatial]`` to ``roi`` around the centre (2D evaluation when the ROI is smaller than the image)."""
    starts = [max(0, (s - r) // 2) for s, r in zip(image.shape[1:], roi)]
    return image[(slice(None), *(slice(a, a + r) for a, r in zip(starts, roi)))]


# --------------------------------------------------------------------------- export


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Rows (dicts) to CSV; the header is the union of keys in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray, path: str | Path, title: str = "",
                 class_names: list[str] | tuple[str, ...] = ()) -> Path:
    """PNG: the axial slice with most ground truth; image, ground truth and prediction overlaid, with the
    slice, the axes' directions and a legend of the classes' colours."""
    plt = pyplot()
    from matplotlib.patches import Patch

    z = int(np.argmax((label > 0).reshape(-1, label.shape[-1]).sum(0))) if label.any() else label.shape[-1] // 2
    base = np.rot90(np.asarray(image)[0][:, :, z])
    vmax = max(int(max(label.max(), pred.max(), 1)), 9)
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.6))
    for ax, (name, lab) in zip(axes, (("image", None), ("ground truth", label), ("prediction", pred))):
        ax.imshow(base, cmap="gray", interpolation="nearest")
        if lab is not None:
            ax.imshow(np.ma.masked_equal(np.rot90(lab[:, :, z]), 0), cmap=cmap, vmin=0, vmax=vmax,
                      alpha=0.5, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        label_axes(ax, z, label.shape[-1])
    present = sorted(int(v) for v in np.union1d(np.unique(label), np.unique(pred)) if v > 0)
    if present:
        names = {k + 1: n for k, n in enumerate(class_names)}
        fig.legend(handles=[Patch(color=cmap(v / vmax), alpha=0.6, label=names.get(v, f"class {v}")) for v in present],
                   loc="lower center", ncol=min(len(present), 7), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, path)
