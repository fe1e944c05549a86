"""ViT classifier: the (pre-trained) MAE encoder and a linear head, as in MAE fine-tuning."""

from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn

from rayssl.models.vit import ViTEncoder


class ViTClassifier(nn.Module):
    """ViT encoder + ``Linear`` head on the cls token or on the mean of the patch tokens.

    Args:
        spatial_dims: 2 (chest X-ray) or 3.
        img_size: input shape (divisible by ``patch_size``).
        patch_size: patch side.
        in_channels: input channels.
        num_classes: outputs (14 findings for ChestX-ray14).
        embed_dim, depth, num_heads: encoder size (see ``VIT_SIZES``).
        drop_path_rate: encoder stochastic depth.
        pool: ``"cls"`` or ``"mean"``.
    """

    def __init__(self, spatial_dims: int = 2, img_size: Iterable[int] = (224, 224), patch_size: int = 16,
                 in_channels: int = 1, num_classes: int = 14, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, drop_path_rate: float = 0.1, pool: str = "cls"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.encoder = ViTEncoder(spatial_dims, img_size, patch_size, in_channels, embed_dim, depth, num_heads,
                                  drop_path_rate=drop_path_rate, learnable_pos_embed=True)
        self.pool, self.out_channels = pool, num_classes
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE fine-tuning head init
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, *img_size]`` -> logits ``[N, num_classes]``."""
        tokens = self.encoder(x)["tokens"]  # [N, 1 + L, D]
        feat = tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)
        return self.head(feat)
