"""Label maps -> training targets: one-hot classes, or BraTS tumour regions as MSD ``dataset.json`` defines them.

MSD Task01 labels: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour. The evaluated regions are
tumour core TC = {2, 3}, whole tumour WT = {1, 2, 3}, enhancing tumour ET = {3} (taking label 2 as
enhancing is the common bug).
"""

from __future__ import annotations

import torch
from torch import Tensor

BRATS_REGIONS = {"TC": (2, 3), "WT": (1, 2, 3), "ET": (3,)}


def brats_regions(label: Tensor) -> Tensor:
    """``[N, *spatial]`` or ``[N, 1, *spatial]`` MSD labels -> ``[N, 3, *spatial]`` float TC, WT, ET."""
    if label.ndim >= 2 and label.shape[1] == 1 and label.ndim in (4, 5):
        label = label[:, 0]
    chans = [torch.isin(label, torch.tensor(v, device=label.device)) for v in BRATS_REGIONS.values()]
    return torch.stack(chans, dim=1).float()


def regions_to_labels(regions: Tensor) -> Tensor:
    """Binary ``[N, 3, *spatial]`` TC, WT, ET -> MSD label map ``[N, *spatial]`` (1 edema, 2 core, 3 enhancing)."""
    tc, wt, et = regions[:, 0] > 0, regions[:, 1] > 0, regions[:, 2] > 0
    out = torch.zeros_like(tc, dtype=torch.uint8)
    out[wt] = 1
    out[tc] = 2
    out[et] = 3
    return out


def one_hot(label: Tensor, num_classes: int) -> Tensor:
    """``[N, *spatial]`` integer labels -> ``[N, num_classes, *spatial]`` float.

    Raises:
        ValueError: a label value is outside ``0..num_classes - 1``.
    """
    label = label.long()
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        raise ValueError(f"label values {int(label.min())}..{int(label.max())} outside 0..{num_classes - 1} "
                         f"(task.num_classes={num_classes})")
    return torch.nn.functional.one_hot(label, num_classes).movedim(-1, 1).float()


def to_channels(label: Tensor, mode: str, num_classes: int) -> Tensor:
    """Label map ``[N, *spatial]`` -> ``[N, K, *spatial]`` channels for ``mode`` ``multiclass`` / ``brats_regions``."""
    if mode == "brats_regions":
        return brats_regions(label)
    if mode == "multiclass":
        return one_hot(label, num_classes)
    raise ValueError(f"mode must be 'multiclass' or 'brats_regions', got {mode!r}")


def discretise(logits: Tensor, mode: str) -> Tensor:
    """Network output ``[N, K, *spatial]`` -> binary channels (argmax one-hot, or sigmoid > 0.5)."""
    if mode == "brats_regions":
        return (logits > 0).float()
    return one_hot(logits.argmax(dim=1), logits.shape[1])


def to_label_map(binary: Tensor, mode: str) -> Tensor:
    """Binary channels ``[N, K, *spatial]`` -> label map ``[N, *spatial]`` uint8 in the source's label values."""
    if mode == "brats_regions":
        return regions_to_labels(binary)
    return binary.argmax(dim=1).to(torch.uint8)
