"""The downstream network a fine-tuning config asks for, and its AdamW groups with layer-wise lr decay."""

from __future__ import annotations

from torch import nn

from rayssl.config import FinetuneConfig
from rayssl.models.vit import VIT_SIZES, ViTEncoder
from rayssl.train.optim import NO_DECAY_PATTERNS


def build_model(cfg: FinetuneConfig, in_channels: int, out_channels: int) -> nn.Module:
    """UNETR, Genesis U-Net (new output head, no sigmoid) or ViT classifier for ``cfg.model.arch``."""
    m, roi = cfg.model, tuple(cfg.data.roi)
    if m.arch == "unetr":
        from rayssl.models.unetr import UNETR

        return UNETR(roi, m.patch_size, in_channels, out_channels, **VIT_SIZES[m.size], drop_path_rate=m.drop_path,
                     feature_size=m.feature_size, hidden_blocks=m.hidden_blocks)
    if m.arch == "genesis_unet":
        from rayssl.models.genesis_unet import GenesisUNet

        return GenesisUNet(in_channels, out_channels, m.unet_base_channels, m.unet_norm, sigmoid=False)
    from rayssl.models.classifier import ViTClassifier

    return ViTClassifier(len(roi), roi, m.patch_size, in_channels, out_channels, **VIT_SIZES[m.size],
                         drop_path_rate=m.drop_path, pool=m.pool)


def _decays(name: str, p) -> bool:
    return p.ndim > 1 and not any(name.endswith(pattern.lstrip("*")) for pattern in NO_DECAY_PATTERNS)


def lrd_param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """Param groups with ``lr = lr * lr_scale`` per group.

    The ViT encoder (``model.encoder``) gets ``layer_decay ** (depth + 1 - layer_id)`` (embeddings
    id 0, block i id i + 1, final norm depth + 1); everything else (decoder, head, a U-Net) gets
    scale 1. Biases, norms and token embeddings get no weight decay.

    Args:
        model: UNETR, ViT classifier (both with ``.encoder``) or any module.
        lr: peak learning rate of the head / deepest layer.
        weight_decay: AdamW weight decay of weight matrices.
        layer_decay: per-layer factor in (0, 1].

    Returns:
        dicts with ``params``, ``names``, ``lr``, ``lr_scale``, ``weight_decay``.
    """
    encoder = getattr(model, "encoder", None)
    groups = []
    if isinstance(encoder, ViTEncoder):
        groups = encoder.param_groups_lrd(weight_decay, layer_decay, prefix="encoder.")
    in_encoder = {id(p) for g in groups for p in g["params"]}
    named = [(n, p) for n, p in model.named_parameters() if id(p) not in in_encoder and p.requires_grad]
    for decay in (True, False):
        chosen = [(n, p) for n, p in named if _decays(n, p) == decay]
        if chosen:
            groups.append({"params": [p for _, p in chosen], "names": [n for n, _ in chosen], "lr_scale": 1.0,
                           "weight_decay": weight_decay if decay else 0.0})
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return groups

