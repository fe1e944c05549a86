"""Probabilities of an ensemble on one preprocessed case (with flip test-time augmentation), and the outputs
they make on the file's own grid."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

from rayssl.data.geometry import to_source_grid
from rayssl.finetune.evaluate import predict_volume
from rayssl.finetune.labels import regions_to_labels
from rayssl.finetune.task import TaskSpec


def flips(spatial_dims: int, tta: str) -> list[tuple[int, ...]]:
    """The flip combinations test-time augmentation averages over: every subset of the spatial axes for
    ``tta="flip"`` (8 in 3D; in 2D the horizontal flip only, 2), as nnU-Net mirrors; ``[()]`` for ``none``."""
    if tta == "none":
        return [()]
    if tta != "flip":
        raise ValueError(f"tta must be 'none' or 'flip', got {tta!r}")
    axes = range(spatial_dims) if spatial_dims == 3 else (spatial_dims - 1,)
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _activation(logits: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    return torch.sigmoid(logits) if spec.mode in ("brats_regions", "multilabel") else torch.softmax(logits, dim=1)


@torch.no_grad()
def segment_probabilities(networks: list[nn.Module], image: np.ndarray, spec: TaskSpec, rois: list[tuple[int, ...]],
                          overlap: float, sw_batch_size: int, tta: str = "none", device="cpu") -> np.ndarray:
    """Softmax (classes) or sigmoid (regions) probabilities ``[K, *spatial]`` of a preprocessed volume
    ``[C, *spatial]``: the mean over the networks of an ensemble and over the TTA flips (each prediction is
    flipped back before it is averaged)."""
    x = torch.as_tensor(np.asarray(image, np.float32))
    total = None
    combos = flips(x.ndim - 1, tta)
    for net, roi in zip(networks, rois):
        for axes in combos:
            dims = [a + 1 for a in axes]
            xi = torch.flip(x, dims) if axes else x
            p = _activation(predict_volume(net, xi, roi, overlap, sw_batch_size, device), spec)[0]
            p = torch.flip(p, dims) if axes else p
            total = p if total is None else total + p
    return (total / (len(networks) * len(combos))).numpy()


@torch.no_grad()
def classify_probabilities(networks: list[nn.Module], image: np.ndarray, tta: str = "none", device="cpu") -> np.ndarray:
    """Sigmoid finding probabilities ``[K]`` of a preprocessed 2D image ``[C, H, W]`` (ensemble and flip mean)."""
    x = torch.as_tensor(np.asarray(image, np.float32))[None].to(device)
    combos = flips(2, tta)
    total = 0.0
    for net in networks:
        dtype = next(net.parameters()).dtype
        for axes in combos:
            xi = torch.flip(x, [a + 2 for a in axes]) if axes else x
            total = total + torch.sigmoid(net(xi.to(dtype)).float())[0].cpu()
    return (total / (len(networks) * len(combos))).numpy()


def label_map(probs: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """The label map of probabilities ``[K, *spatial]``: argmax of the classes, or the MSD labels of the
    regions above 0.5 (1 edema, 2 core, 3 enhancing)."""
    p = torch.as_tensor(probs)
    if spec.mode == "brats_regions":
        return regions_to_labels((p > 0.5)[None].float())[0].numpy()
    labels = p.argmax(dim=0)
    return labels.numpy().astype(np.uint8 if spec.num_classes <= 256 else np.uint16)


def on_source_grid(probs: np.ndarray, volume: dict, spec: TaskSpec, keep_probabilities: bool):
    """The label map (nearest) and, if asked, the probabilities (linear) on the file's own grid."""
    labels = label_map(probs, spec)
    labels = to_source_grid(labels[None], volume["affine"], volume["source_affine"], volume["source_shape"],
                            mode="nearest")[0]
    if not keep_probabilities:
        return labels, None
    fill = [1.0] + [0.0] * (probs.shape[0] - 1) if spec.mode == "multiclass" else 0.0  # cropped away: background
    return labels, to_source_grid(probs, volume["affine"], volume["source_affine"], volume["source_shape"], fill=fill)
