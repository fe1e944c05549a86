"""Plotting shared by the reconstruction previews (:mod:`rayssl.pretrain.preview`) and the segmentation overlays
(:mod:`rayssl.finetune.evaluate`): matplotlib without a display, slice axes named, figures saved as PNG."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (workers and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_axes(ax, z: int | None = None, depth: int | None = None) -> None:
    """Axis names of a slice of a RAS volume shown with ``np.rot90`` (axial slice ``z`` of ``depth``): the patient's
    right on the right of the image (neurological convention), anterior up."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("x: patient left -> right" if depth is not None else "x", fontsize=7)  # RAS, rot90: x to the right
    ax.set_ylabel("y: posterior -> anterior" if depth is not None else "y", fontsize=7)
    if depth is not None:
        ax.text(0.02, 0.98, f"axial z {z}/{depth}", transform=ax.transAxes, va="top", fontsize=7, color="yellow")


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to the PNG ``path`` (its folder made) at 90 dpi and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    pyplot().close(fig)
    return path
