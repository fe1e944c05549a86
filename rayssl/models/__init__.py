"""Pre-training and fine-tuning models: ViT encoder, MAE (2D/3D), Models Genesis U-Net.

Names are imported lazily, so an MAE worker does not import MONAI (the Genesis U-Net's and UNETR's blocks).
"""

from rayssl._lazy import lazy_exports

_EXPORTS = {
    "GenesisUNet": "genesis_unet",
    "MaskedAutoencoder": "mae",
    "VIT_SIZES": "vit",
    "ViTEncoder": "vit",
    "interpolate_pos_embed": "vit",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
