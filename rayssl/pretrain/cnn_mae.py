"""Masked image modelling of a whole U-Net (nnssl's MAE trainers; Wald et al., CVPR 2025): mask blocks of the input,
let the network see the rest, regress the masked voxels.

Each sample masks ``int(mask_ratio * G)`` of the ``G`` cells of a grid of ``block``-sided cubes, drawn as a random
permutation of the grid and repeated up to voxels; masked voxels are set to 0; the loss is the mean squared error
over the masked voxels only. A fixed number of cells per sample keeps every shape static (one compiled graph).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def block_mask(n: int, spatial: tuple[int, ...], block: int, mask_ratio: float, generator: torch.Generator,
               device: torch.device) -> Tensor:
    """``[n, 1, *spatial]`` float, 1 = masked: ``int(mask_ratio * cells)`` of each sample's ``block``-sided cells
    (nnssl ``BaseMAETrainer.create_blocky_mask``: a random permutation of the coarse grid, repeated up to voxels).

    Raises:
        ValueError: a side not divisible by ``block``, or a ratio that masks no cell or every cell.
    """
    if any(s % block for s in spatial):
        raise ValueError(f"data.roi {list(spatial)} must divide by model.mask_block={block} on every axis")
    grid = tuple(s // block for s in spatial)
    cells = math.prod(grid)
    masked = int(mask_ratio * cells)
    if not 0 < masked < cells:
        raise ValueError(f"model.mask_ratio={mask_ratio} masks {masked} of {cells} cells of {block}^d voxels: "
                         "choose a ratio or block that masks some cells and keeps some")
    order = torch.rand(n, cells, generator=generator, device=generator.device).argsort(dim=1).to(device)
    mask = (order < masked).float().reshape(n, 1, *grid)  # the cells ranked first are masked
    for axis in range(len(grid)):
        mask = mask.repeat_interleave(block, dim=2 + axis)
    return mask


def masked_mse(reconstruction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the masked voxels (``mask`` ``[N, 1, *spatial]``, broadcast over channels; nnssl
    ``training/loss/mse_loss.py``, there on one channel)."""
    err = (reconstruction.float() - target.float()).square() * mask
    return err.sum() / (mask.sum() * target.shape[1])


class CNNMAEObjective:
    """Masked-image modelling of a U-Net: MSE on the masked blocks; previews show the input, what the network saw,
    and its reconstruction with the visible voxels pasted back."""

    def __init__(self, mask_ratio: float, block: int):
        self.mask_ratio, self.block = mask_ratio, block

    def _mask(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return block_mask(x.shape[0], tuple(x.shape[2:]), self.block, self.mask_ratio, generator, x.device).to(x.dtype)

    def loss(self, model: nn.Module, x: Tensor, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        mask = self._mask(x, generator)
        seen = (x * (1 - mask)).to(dtype)
        return masked_mse(model(seen, mask.to(dtype)), x, mask)

    @torch.no_grad()
    def preview(self, model: nn.Module, x: Tensor, generator: torch.Generator, dtype: torch.dtype):
        mask = self._mask(x, generator)
        seen = x * (1 - mask)
        pasted = seen + model(seen.to(dtype), mask.to(dtype)).float() * mask
        return list(zip(x, seen, pasted))
