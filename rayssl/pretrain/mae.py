"""The MAE objective: the model computes the masked-patch MSE itself (:mod:`rayssl.models.mae`)."""

from __future__ import annotations

import torch
from torch import nn


class MAEObjective:
    """MSE on masked patches (the model computes it); previews show visible patches and the
    reconstruction with the visible patches pasted back, as in the MAE paper's figures."""

    def __init__(self, mask_ratio: float):
        self.mask_ratio = mask_ratio

    def loss(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        loss, _, _ = model(x.to(dtype), mask_ratio=self.mask_ratio)
        return loss

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator, dtype: torch.dtype):
        _, pred, mask = model(x.to(dtype), mask_ratio=self.mask_ratio)
        pred, mask = pred.float(), mask.float()
        target = model.patchify(x)  # [N, L, p^d * C]
        if model.norm_pix_loss:  # undo the per-patch normalisation for display
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        keep = (1 - mask).unsqueeze(-1)  # [N, L, 1], 1 = visible
        masked = model.unpatchify(target * keep)
        pasted = model.unpatchify(target * keep + pred * (1 - keep))
        return list(zip(x, masked, pasted))
