"""The networks' schemas: pre-training (``ModelConfig``, Models Genesis' ``CorruptionConfig``) and fine-tuning
(``FinetuneModelConfig``, ``TaskConfig``)."""

from __future__ import annotations

from dataclasses import fields
from typing import Literal

from pydantic import Field, create_model

from rayssl.config.base import Strict
from rayssl.config.corruption import CorruptionProbs


def resenc_divisor(size: str) -> int:
    """What the input sides of a residual U-Net of ``size`` must divide by (its downsamplings; models/resenc_unet.py)."""
    return {"tiny": 8, "small": 16, "base": 32, "large": 32}[size]


class ModelConfig(Strict):
    """The network: a masked autoencoder (2D/3D ViT), the Models Genesis U-Net, or a residual U-Net pre-trained by
    masked image modelling."""

    method: Literal["mae", "genesis", "cnn_mae"] = "mae"
    """``mae`` (masked autoencoder, ViT), ``genesis`` (Models Genesis U-Net) or ``cnn_mae`` (masked image modelling
    of a whole residual-encoder U-Net, as nnssl)."""
    size: Literal["tiny", "small", "base", "large"] = "base"
    """Network size: the ViT encoder's (mae) or the residual U-Net's (cnn_mae; large: nnU-Net's ResEnc-L)."""
    patch_size: int = Field(16, ge=2)
    """ViT patch side in voxels (16 in the paper); data.roi must be a multiple."""
    decoder_embed_dim: int = Field(384, ge=6)
    """MAE decoder width (384 in SelfMedMAE's 3D configs)."""
    decoder_depth: int = Field(8, ge=1)
    """MAE decoder blocks."""
    decoder_num_heads: int = Field(12, ge=1)
    """MAE decoder attention heads."""
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0)
    """Fraction of patches the MAE masks (cnn_mae: of the mask_block-sided blocks)."""
    mask_block: int = Field(16, ge=1)
    """cnn_mae: side of the masked blocks in voxels (nnssl: 16); data.roi must divide by it."""
    sparse: bool = False
    """cnn_mae: the Spark3D variant, re-applying the mask after every encoder stage."""
    norm_pix_loss: bool = False
    """Regress each masked patch normalised by its own mean and variance (SelfMedMAE always does)."""
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    """Encoder stochastic depth during pre-training."""
    unet_base_channels: int = Field(32, ge=1)
    """Genesis U-Net width of the first convolution (32 in the paper)."""
    unet_norm: Literal["batch", "instance", "group"] = "batch"
    """Genesis U-Net normalisation (the paper: batch, with batch statistics in eval too)."""


CorruptionConfig = create_model(  # CorruptionProbs' fields, defaults and descriptions, each a probability
    "CorruptionConfig", __base__=Strict, __module__=__name__, __doc__=CorruptionProbs.__doc__,
    **{f.name: (float, Field(f.default, ge=0.0, le=1.0, description=f.metadata["doc"]))
       for f in fields(CorruptionProbs)},
)


class FinetuneModelConfig(Strict):
    """The downstream network: UNETR (3D seg), Genesis U-Net (3D seg) or a ViT classifier (2D)."""

    arch: Literal["unetr", "genesis_unet", "resenc_unet", "vit_classifier"] = "unetr"
    size: Literal["tiny", "small", "base", "large"] = "base"
    """ViT encoder size (UNETR, classifier) or residual U-Net size (resenc_unet)."""
    patch_size: int = Field(16, ge=2)
    drop_path: float = Field(0.1, ge=0.0, lt=1.0)
    feature_size: int = Field(16, ge=1)
    """UNETR decoder width."""
    hidden_blocks: list[int] | None = None
    """UNETR skip connections: increasing 1-based encoder blocks (``None``: 4, 7, 10 for depth 12 and
    patch 16, MONAI's ``hidden_states_out[3], [6], [9]``; ``models.unetr.default_hidden_blocks`` otherwise)."""
    pool: Literal["cls", "mean"] = "cls"
    """Classifier: the cls token or the mean of the patch tokens."""
    unet_base_channels: int = Field(32, ge=1)
    unet_norm: Literal["batch", "instance", "group"] = "batch"
    layer_decay: float = Field(0.75, gt=0.0, le=1.0)
    """Layer-wise lr decay of the ViT encoder (1: none)."""


class TaskConfig(Strict):
    """What is predicted and how it is scored."""

    labels: Literal["multiclass", "brats_regions", "multilabel"] | None = None
    """``multiclass`` (softmax, one-hot, DiceCE), ``brats_regions`` (TC/WT/ET sigmoid channels, Dice),
    ``multilabel`` (2D findings, BCE); ``None`` picks from the architecture and the source."""
    num_classes: int | None = Field(None, ge=1)
    """Output channels; ``None``: from the source's label names (background included for multiclass)."""
    loss: Literal["dicece", "dice", "bce"] | None = None
    """``None``: DiceCE for multiclass, Dice for BraTS regions, BCE for multilabel."""
