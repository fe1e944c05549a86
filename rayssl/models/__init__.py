"""Pre-training and fine-tuning models: ViT encoder, MAE (2D/3D), Models Genesis U-Net."""

from rayssl.models.genesis_unet import GenesisUNet
from rayssl.models.mae import MaskedAutoencoder
from rayssl.models.vit import VIT_SIZES, ViTEncoder, interpolate_pos_embed

__all__ = ["GenesisUNet", "MaskedAutoencoder", "VIT_SIZES", "ViTEncoder", "interpolate_pos_embed"]
