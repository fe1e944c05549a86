"""Masked Autoencoder for 2D images and 3D volumes (Zhou et al., ISBI 2023; He et al., CVPR 2022).

The encoder (:class:`ViTEncoder`) sees only the visible patches; a light decoder fills in mask
tokens and predicts the pixels of every patch; the loss is the MSE on masked patches. Written
here rather than taken from MONAI because MONAI's MAE has neither the norm-pix loss nor drop path.
"""

from __future__ import annotations

from functools import partial
from typing import Iterable

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from rayssl.models.vit import ViTEncoder, init_weights
from rayssl.models.pos_embed import sincos_pos_embed


class MaskedAutoencoder(nn.Module):
    """MAE with a ViT encoder and a transformer decoder, for ``spatial_dims`` 2 or 3.

    Args:
        spatial_dims: 2 or 3.
        img_size: input spatial shape (divisible by ``patch_size``).
        patch_size: patch side.
        in_channels: input channels (e.g. 1 for CT, 4 for BraTS MRI).
        embed_dim, depth, num_heads: encoder width / blocks / heads (see ``VIT_SIZES``).
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder width / blocks / heads.
        mlp_ratio: MLP hidden width / token width.
        norm_pix_loss: regress each patch normalised by its own mean and variance.
        drop_path_rate: encoder stochastic depth.
    """

    def __init__(self, spatial_dims: int = 3, img_size: Iterable[int] = (96, 96, 96), patch_size: int = 16,
                 in_channels: int = 1, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 decoder_embed_dim: int = 384, decoder_depth: int = 8, decoder_num_heads: int = 12,
                 mlp_ratio: float = 4.0, norm_pix_loss: bool = False, drop_path_rate: float = 0.0):
        super().__init__()
        self.encoder = ViTEncoder(spatial_dims, img_size, patch_size, in_channels, embed_dim, depth,
                                  num_heads, mlp_ratio, drop_path_rate)
        if decoder_embed_dim % decoder_num_heads or decoder_embed_dim % (2 * spatial_dims):
            raise ValueError(f"decoder_embed_dim={decoder_embed_dim} must be divisible by decoder_num_heads="
                             f"{decoder_num_heads} and by {2 * spatial_dims} (sin-cos position embedding)")
        if decoder_depth < 1:
            raise ValueError(f"decoder_depth={decoder_depth} must be >= 1")
        self.spatial_dims, self.patch_size, self.in_channels = spatial_dims, patch_size, in_channels
        self.grid_size, self.norm_pix_loss = self.encoder.grid_size, norm_pix_loss

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        pos = torch.from_numpy(sincos_pos_embed(decoder_embed_dim, self.grid_size))[None]
        self.decoder_pos_embed = nn.Parameter(pos, requires_grad=False)  # [1, 1 + L, Dd], fixed
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)
        ])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** spatial_dims * in_channels)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, *self.decoder_blocks, self.decoder_norm, self.decoder_pred]:
            m.apply(init_weights)

    def patchify(self, imgs: Tensor) -> Tensor:
        """``[N, C, *spatial]`` -> ``[N, L, p**d * C]``, pixels of a patch ordered ``(p, .., p, C)``."""
        d, p, c = self.spatial_dims, self.patch_size, self.in_channels
        expected = (c, *self.encoder.img_size)
        if imgs.ndim != 2 + d or tuple(imgs.shape[1:]) != expected:
            raise ValueError(f"imgs must be [N, {', '.join(map(str, expected))}], got {list(imgs.shape)}")
        n = imgs.shape[0]
        shape = [n, c] + [v for g in self.grid_size for v in (g, p)]
        x = imgs.reshape(shape)  # [N, C, g0, p, g1, p, (g2, p)]
        x = x.permute(0, *range(2, 2 + 2 * d, 2), *range(3, 3 + 2 * d, 2), 1)  # [N, g.., p.., C]
        return x.reshape(n, -1, p ** d * c)

    def unpatchify(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`patchify`: ``[N, L, p**d * C]`` -> ``[N, C, *spatial]``."""
        d, p, c = self.spatial_dims, self.patch_size, self.in_channels
        if x.ndim != 3 or x.shape[1] != self.encoder.num_patches or x.shape[2] != p ** d * c:
            raise ValueError(f"x must be [N, {self.encoder.num_patches}, {p ** d * c}], got {list(x.shape)}")
        n = x.shape[0]
        x = x.reshape(n, *self.grid_size, *([p] * d), c)  # [N, g.., p.., C]
        perm = [0, 1 + 2 * d] + [v for a in range(d) for v in (1 + a, 1 + d + a)]
        x = x.permute(perm)  # [N, C, g0, p, g1, p, (g2, p)]
        return x.reshape(n, c, *self.encoder.img_size)

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """Predict every patch from the visible latents.

        Args:
            latent: ``[N, 1 + L_keep, D]`` encoder output (cls first).
            ids_restore: ``[N, L]`` from the encoder's masking.

        Returns:
            ``[N, L, p**d * C]`` patch predictions.
        """
        x = self.decoder_embed(latent)  # x: [N, 1 + L_keep, Dd]
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)  # [N, L, Dd], visible first
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # original order
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop cls

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean over masked patches of the per-patch pixel MSE.

        Args:
            imgs: ``[N, C, *spatial]``.
            pred: ``[N, L, p**d * C]``.
            mask: ``[N, L]``, 1 = masked (the only patches that count).
        """
        target = self.patchify(imgs)  # [N, L, p**d * C]
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)  # [N, L], per patch
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: Tensor, mask_ratio: float = 0.75) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(loss, pred [N, L, p**d * C], mask [N, L])``."""
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio} must be in (0, 1) for MAE pre-training")
        out = self.encoder(imgs, mask_ratio=mask_ratio)
        pred = self.forward_decoder(out["tokens"], out["ids_restore"])
        return self.forward_loss(imgs, pred, out["mask"]), pred, out["mask"]
