"""Models Genesis (Zhou et al., MedIA 2021): the restoration objective. The corruptions it restores from are
:mod:`rayssl.pretrain.genesis_corruptions`; the network is :mod:`rayssl.models.genesis_unet`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from rayssl.pretrain.genesis_corruptions import GenesisCorruption

if TYPE_CHECKING:
    from rayssl.config import CorruptionConfig


class GenesisObjective:
    """Restore the original sub-volume from its corrupted version (MSE)."""

    def __init__(self, c: CorruptionConfig):
        self.corrupt = GenesisCorruption(**c.model_dump())

    def loss(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """MSE of the restoration of ``x`` from its corruption (drawn on the worker)."""
        corrupted, target = self.corrupt(x, generator)
        return F.mse_loss(model(corrupted.to(dtype)).float(), target)

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator, dtype: torch.dtype):
        corrupted, target = self.corrupt(x, generator)
        return list(zip(target, corrupted, model(corrupted.to(dtype)).float()))
