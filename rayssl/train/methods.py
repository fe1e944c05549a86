"""The two self pre-training methods as (model, loss, preview) triples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rayssl.config import CorruptionConfig, PretrainConfig


def build_model(cfg: PretrainConfig, channels: int) -> nn.Module:
    """The network a pre-training config asks for, on ``channels`` input channels."""
    roi = tuple(cfg.data.roi)
    m = cfg.model
    if m.method == "mae":
        from rayssl.models.mae import MaskedAutoencoder
        from rayssl.models.vit import VIT_SIZES

        return MaskedAutoencoder(
            spatial_dims=len(roi),
            img_size=roi,
            patch_size=m.patch_size,
            in_channels=channels,
            **VIT_SIZES[m.size],
            decoder_embed_dim=m.decoder_embed_dim,
            decoder_depth=m.decoder_depth,
            decoder_num_heads=m.decoder_num_heads,
            norm_pix_loss=m.norm_pix_loss,
            drop_path_rate=m.drop_path,
        )
    if len(roi) != 3:
        raise ValueError(f"model.method=genesis needs a 3D data.roi, got {list(roi)}")
    from rayssl.models.genesis_unet import GenesisUNet

    return GenesisUNet(in_channels=channels, out_channels=channels, base_channels=m.unet_base_channels, norm=m.unet_norm)


def export_meta(cfg: PretrainConfig, channels: int) -> dict:
    """The sidecar of the exported weights: enough to rebuild the network for fine-tuning."""
    m = cfg.model
    meta = {
        "method": m.method,
        "preset": cfg.preset,
        "spatial_dims": len(cfg.data.roi),
        "roi": list(cfg.data.roi),
        "in_channels": channels,
        "recipe": cfg.data.recipe,
    }
    if m.method == "mae":
        from rayssl.models.vit import VIT_SIZES

        meta.update(architecture="vit", size=m.size, patch_size=m.patch_size, mask_ratio=m.mask_ratio, **VIT_SIZES[m.size])
    else:
        meta.update(architecture="genesis_unet", base_channels=m.unet_base_channels, norm=m.unet_norm)
    return meta


class MAEObjective:
    """MSE on masked patches (the model computes it); previews show visible patches and the
    reconstruction with the visible patches pasted back, as in the MAE paper's figures."""

    def __init__(self, cfg: PretrainConfig):
        self.mask_ratio = cfg.model.mask_ratio

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


def genesis_corruption(c: CorruptionConfig):
    from rayssl.ssl.genesis import GenesisCorruption

    return GenesisCorruption(flip_prob=c.flip_prob, shuffle_prob=c.shuffle_prob, nonlinear_prob=c.nonlinear_prob,
                             paint_prob=c.paint_prob, inpaint_rate=c.inpaint_rate)


class GenesisObjective:
    """Restore the original sub-volume from its corrupted version (MSE)."""

    def __init__(self, cfg: PretrainConfig):
        self.corrupt = genesis_corruption(cfg.corruption)

    def loss(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """MSE of the restoration of ``x`` from its corruption (drawn on the worker)."""
        corrupted, target = self.corrupt(x, generator)
        return F.mse_loss(model(corrupted.to(dtype)).float(), target)

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator, dtype: torch.dtype):
        corrupted, target = self.corrupt(x, generator)
        return list(zip(target, corrupted, model(corrupted.to(dtype)).float()))


def build_objective(cfg: PretrainConfig):
    return MAEObjective(cfg) if cfg.model.method == "mae" else GenesisObjective(cfg)
