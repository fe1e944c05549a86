"""Reconstruction previews: original / masked or corrupted / reconstruction, middle slices, as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rayssl.viz import label_axes, pyplot, save_figure


def middle_slice(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[C, *spatial]`` -> 2D image of channel 0 (the middle axial slice of a volume)."""
    a = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    a = a[0]
    if a.ndim == 3:
        a = a[:, :, a.shape[2] // 2]
    return np.rot90(a)  # RAS arrays: rotate so anterior is up, like a viewer


def save_preview(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], path: str | Path, title: str = "") -> Path:
    """Save a grid with one row per sample and columns original / input / reconstruction.

    Args:
        rows: ``(original, model_input, reconstruction)`` per sample, each ``[C, *spatial]``.
        path: output PNG path.
        title: figure title (e.g. method, epoch and loss).
    """
    if not rows:
        raise ValueError("save_preview needs at least one sample")
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for r, images in enumerate(rows):
        slices = [middle_slice(image) for image in images]
        lo, hi = np.percentile(slices[0], [0.5, 99.5])  # one grey scale per row, set by the original
        depth = images[0].shape[-1] if images[0].ndim == 4 else None  # [C, X, Y, Z]: an axial slice of Z
        for c, (image, name) in enumerate(zip(slices, ("original", "input", "reconstruction"))):
            ax = axes[r][c]
            ax.imshow(image, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
            label_axes(ax, None if depth is None else depth // 2, depth)
            if r == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
