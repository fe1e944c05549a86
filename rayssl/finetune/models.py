"""The downstream network a fine-tuning config asks for."""

from __future__ import annotations

from torch import nn

from rayssl.config import FinetuneConfig
from rayssl.models.vit import VIT_SIZES


def build_model(cfg: FinetuneConfig, in_channels: int, out_channels: int) -> nn.Module:
    """UNETR, Genesis U-Net (new output head, no sigmoid), residual U-Net or ViT classifier for ``cfg.model.arch``."""
    m, roi = cfg.model, tuple(cfg.data.roi)
    if m.arch == "unetr":
        from rayssl.models.unetr import UNETR

        return UNETR(roi, m.patch_size, in_channels, out_channels, **VIT_SIZES[m.size], drop_path_rate=m.drop_path,
                     feature_size=m.feature_size, hidden_blocks=m.hidden_blocks)
    if m.arch == "resenc_unet":
        from rayssl.models.resenc_unet import RESENC_SIZES, ResEncUNet

        return ResEncUNet(in_channels, out_channels, **RESENC_SIZES[m.size], spatial_dims=cfg.data.spatial_dims)
    if m.arch == "genesis_unet":
        from rayssl.models.genesis_unet import GenesisUNet

        return GenesisUNet(in_channels, out_channels, m.unet_base_channels, m.unet_norm, sigmoid=False)
    from rayssl.models.classifier import ViTClassifier

    return ViTClassifier(cfg.data.spatial_dims, roi, m.patch_size, in_channels, out_channels, **VIT_SIZES[m.size],
                         drop_path_rate=m.drop_path, pool=m.pool)
