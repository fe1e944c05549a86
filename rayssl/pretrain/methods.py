"""The two self pre-training methods: their networks, objectives and what their exported weights hold."""

from __future__ import annotations

import torch
from torch import nn

from rayssl.config import PretrainConfig


def build_model(cfg: PretrainConfig, channels: int) -> nn.Module:
    """The network a pre-training config asks for, on ``channels`` input channels."""
    roi = tuple(cfg.data.roi)
    m = cfg.model
    if m.method == "mae":
        from rayssl.models.mae import MaskedAutoencoder
        from rayssl.models.vit import VIT_SIZES

        return MaskedAutoencoder(
            spatial_dims=cfg.data.spatial_dims,
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
    if m.method == "cnn_mae":
        from rayssl.models.resenc_unet import RESENC_SIZES, ResEncUNet

        return ResEncUNet(channels, channels, **RESENC_SIZES[m.size], spatial_dims=cfg.data.spatial_dims, sparse=m.sparse)
    if cfg.data.spatial_dims != 3:
        raise ValueError(f"model.method=genesis needs a 3D data.roi, got {list(roi)}")
    from rayssl.models.genesis_unet import GenesisUNet

    return GenesisUNet(in_channels=channels, out_channels=channels, base_channels=m.unet_base_channels, norm=m.unet_norm)


def export_meta(cfg: PretrainConfig, channels: int) -> dict:
    """The sidecar of the exported weights: enough to rebuild the network for fine-tuning."""
    m = cfg.model
    meta = {
        "method": m.method,
        "preset": cfg.preset,
        "spatial_dims": cfg.data.spatial_dims,
        "roi": list(cfg.data.roi),
        "in_channels": channels,
        "recipe": cfg.data.recipe,
    }
    if m.method == "mae":
        from rayssl.models.vit import VIT_SIZES

        meta.update(architecture="vit", size=m.size, patch_size=m.patch_size, mask_ratio=m.mask_ratio, **VIT_SIZES[m.size])
    elif m.method == "cnn_mae":
        from rayssl.models.resenc_unet import RESENC_SIZES

        meta.update(architecture="resenc_unet", size=m.size, sparse=m.sparse, mask_ratio=m.mask_ratio,
                    mask_block=m.mask_block, **{k: list(v) for k, v in RESENC_SIZES[m.size].items()})
    else:
        meta.update(architecture="genesis_unet", base_channels=m.unet_base_channels, norm=m.unet_norm)
    return meta


def build_objective(cfg: PretrainConfig):
    """The method's objective: ``loss(model, x, generator, dtype)`` and ``preview(...)`` rows."""
    if cfg.model.method == "mae":
        from rayssl.pretrain.mae import MAEObjective

        return MAEObjective(cfg.model.mask_ratio)
    if cfg.model.method == "cnn_mae":
        from rayssl.pretrain.cnn_mae import CNNMAEObjective

        return CNNMAEObjective(cfg.model.mask_ratio, cfg.model.mask_block)
    from rayssl.pretrain.genesis import GenesisObjective

    return GenesisObjective(cfg.corruption)


def export_state(method: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What fine-tuning loads: the ViT encoder of an MAE, the whole U-Net of Models Genesis and of cnn_mae (without
    the sparse variant's mask tokens, which only pre-training uses)."""
    if method == "mae":
        return {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    return {k: v for k, v in weights.items() if not k.startswith("mask_tokens.")}
