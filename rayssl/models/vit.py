"""ViT encoder for 2D / 3D inputs, shared by MAE pre-training, UNETR and the ViT classifier.

Style of facebookresearch/mae: timm ``Block``s, a patch embedding (a strided conv
written as a linear map of patches, so masked inputs embed only their visible patches), a cls token, fixed
sin-cos position embeddings and per-sample random masking of patch tokens.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from rayssl.models.pos_embed import sincos_pos_embed

VIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, depth=4, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    # 1024 (ViT-L) does not divide by 6, which 3D sin-cos embeddings need.
    "large": dict(embed_dim=1152, depth=24, num_heads=16),
}


def init_weights(m: nn.Module) -> None:
    """facebookresearch/mae init: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class PatchEmbed(nn.Module):
    """ViT's strided-conv patch embedding as a linear map of flattened patches.

    The weight keeps the conv's ``[D, C, p, .., p]`` shape (and state-dict names), but the input is
    ``[N, L, C * p**d]`` patches (:meth:`ViTEncoder.patch_pixels`), so a masked MAE embeds only
    its visible patches.
    """

    def __init__(self, spatial_dims: int, in_channels: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(embed_dim, in_channels, *[patch_size] * spatial_dims))
        self.bias = nn.Parameter(torch.empty(embed_dim))
        bound = (in_channels * patch_size ** spatial_dims) ** -0.5
        nn.init.xavier_uniform_(self.weight.view(embed_dim, -1))  # like a linear layer, as in MAE
        nn.init.uniform_(self.bias, -bound, bound)  # a conv's default

    def forward(self, patches: Tensor) -> Tensor:
        return F.linear(patches, self.weight.flatten(1), self.bias)


def check_grid(spatial_dims: int, img_size: Iterable[int], patch_size: int) -> tuple[int, ...]:
    """Validate an image / patch geometry and return the token grid."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    img_size = tuple(int(s) for s in img_size)
    if len(img_size) != spatial_dims:
        raise ValueError(f"img_size={img_size} must have spatial_dims={spatial_dims} entries")
    if patch_size < 1 or any(s < patch_size or s % patch_size for s in img_size):
        raise ValueError(f"img_size={img_size} must be divisible by patch_size={patch_size} on every axis")
    return tuple(s // patch_size for s in img_size)


def interpolate_pos_embed(pos_embed: Tensor, old_grid: tuple[int, ...], new_grid: tuple[int, ...]) -> Tensor:
    """Resize the patch part of a position embedding to a new token grid (cls row kept).

    Args:
        pos_embed: ``[1, 1 + prod(old_grid), D]``.
        old_grid: token grid the embedding was built for (2 or 3 ints).
        new_grid: target token grid, same number of axes.

    Returns:
        ``[1, 1 + prod(new_grid), D]``; trilinear (3D) or bicubic (2D) interpolation.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if len(old_grid) != len(new_grid) or len(old_grid) not in (2, 3):
        raise ValueError(f"old_grid={old_grid} and new_grid={new_grid} must both have 2 or 3 entries")
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or pos_embed.shape[1] != 1 + math.prod(old_grid):
        raise ValueError(f"pos_embed must be [1, 1 + {math.prod(old_grid)}, D] for grid {old_grid}, "
                         f"got {list(pos_embed.shape)}")
    if old_grid == new_grid:
        return pos_embed.clone()
    cls, patch = pos_embed[:, :1], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    patch = patch.reshape(1, *old_grid, dim).movedim(-1, 1).float()  # [1, D, *old_grid]
    mode = "trilinear" if len(old_grid) == 3 else "bicubic"
    patch = F.interpolate(patch, size=new_grid, mode=mode, align_corners=False)
    patch = patch.movedim(1, -1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([cls, patch], dim=1)


class ViTEncoder(nn.Module):
    """ViT encoder over 2D / 3D patches that can drop (mask) a random subset of tokens.

    Args:
        spatial_dims: 2 or 3.
        img_size: input spatial shape, ``spatial_dims`` ints divisible by ``patch_size``.
        patch_size: cubic / square patch side.
        in_channels: input channels.
        embed_dim: token width; divisible by 6 (3D) or 4 (2D) and by ``num_heads``.
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        drop_path_rate: stochastic depth of the last block (linearly increasing from 0).
        learnable_pos_embed: train the position embedding (initialised from sin-cos).
    """

    def __init__(self, spatial_dims: int = 3, img_size: Iterable[int] = (96, 96, 96), patch_size: int = 16,
                 in_channels: int = 1, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, learnable_pos_embed: bool = False):
        super().__init__()
        self.grid_size = check_grid(spatial_dims, img_size, patch_size)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if embed_dim % (2 * spatial_dims):
            raise ValueError(f"embed_dim={embed_dim} must be divisible by {2 * spatial_dims} for "
                             f"{spatial_dims}D sin-cos position embeddings")
        if depth < 1 or in_channels < 1:
            raise ValueError(f"depth={depth} and in_channels={in_channels} must be >= 1")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1)")
        self.spatial_dims, self.img_size, self.patch_size = spatial_dims, tuple(img_size), patch_size
        self.in_channels, self.embed_dim, self.depth = in_channels, embed_dim, depth
        self.num_patches = math.prod(self.grid_size)

        self.patch_embed = PatchEmbed(spatial_dims, in_channels, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = torch.from_numpy(sincos_pos_embed(embed_dim, self.grid_size))[None]
        self.pos_embed = nn.Parameter(pos, requires_grad=learnable_pos_embed)  # [1, 1 + L, D]
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # also under a meta default device
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=norm_layer)
            for i in range(depth)
        ])
        self.norm = norm_layer(embed_dim)

        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def patch_pixels(self, x: Tensor) -> Tensor:
        """``[N, C, *spatial]`` -> ``[N, L, C * p**d]``: each patch's pixels in the patch embedding
        weight's ``(C, p, .., p)`` order, patches in the order of the embedded tokens."""
        n, c, d, p = x.shape[0], x.shape[1], self.spatial_dims, self.patch_size
        x = x.reshape(n, c, *[v for g in self.grid_size for v in (g, p)])  # [N, C, g0, p, g1, p, (g2, p)]
        x = x.permute(0, *range(2, 2 + 2 * d, 2), 1, *range(3, 3 + 2 * d, 2))  # [N, g.., C, p..]
        return x.reshape(n, self.num_patches, c * p ** d)

    def random_masking(self, x: Tensor, mask_ratio: float, noise: Tensor | None = None):
        """Keep a random ``int(L * (1 - mask_ratio))`` tokens per sample.

        Args:
            x: ``[N, L, D]`` patch tokens.
            mask_ratio: fraction of tokens to drop, in [0, 1).
            noise: optional ``[N, L]`` scores; the lowest are kept (default uniform random).

        Returns:
            ``(x_kept [N, L_keep, D], mask [N, L] with 1 = masked, ids_restore [N, L])``.
        """
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
        n, length, dim = x.shape
        keep = int(length * (1 - mask_ratio))
        if keep < 1:
            raise ValueError(f"mask_ratio={mask_ratio} keeps no token out of {length}")
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # unshuffle: mask[i] = 1 if token i is dropped
        return x_kept, mask, ids_restore

    def forward(self, x: Tensor, mask_ratio: float = 0.0, return_hidden: tuple[int, ...] = ()) -> dict[str, Any]:
        """Encode ``x`` ``[N, C, *spatial]``, optionally on a random subset of its patches.

        Returns:
            dict with ``tokens`` ``[N, 1 + L_keep, D]`` (after the final norm), ``mask`` ``[N, L]``
            (1 = masked) and ``ids_restore`` ``[N, L]`` (both ``None`` when ``mask_ratio == 0``), and
            ``hidden``: outputs of the blocks whose 1-based indices are in ``return_hidden``.
        """
        expected = (self.in_channels, *self.img_size)
        if x.ndim != 2 + self.spatial_dims or tuple(x.shape[1:]) != expected:
            raise ValueError(f"input must be [N, {', '.join(map(str, expected))}], got {list(x.shape)}")
        bad = [i for i in return_hidden if not 1 <= i <= self.depth]
        if bad:
            raise ValueError(f"return_hidden={return_hidden}: block indices must be in 1..{self.depth}")
        patches, pos = self.patch_pixels(x), self.pos_embed[:, 1:]  # [N, L, C * p**d], [1, L, D]
        mask = ids_restore = None
        if mask_ratio > 0:  # embed the visible patches only: the embedding is per patch
            patches, mask, ids_restore = self.random_masking(patches, mask_ratio)
            ids_keep = ids_restore.argsort(dim=1)[:, :patches.shape[1]]  # kept tokens, in masking order
            pos = self.pos_embed[0, 1:][ids_keep]  # [N, L_keep, D]
        x = self.patch_embed(patches) + pos  # x: [N, L_keep, D]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # x: [N, 1 + L_keep, D]
        hidden = []
        for i, blk in enumerate(self.blocks, start=1):
            x = blk(x)
            if i in return_hidden:
                hidden.append(x)
        return {"tokens": self.norm(x), "mask": mask, "ids_restore": ids_restore, "hidden": hidden}

    def layer_id(self, name: str) -> int:
        """Layer id for layer-wise lr decay: embeddings 0, ``blocks.i`` i + 1, final norm depth + 1."""
        if name.startswith(("patch_embed", "pos_embed", "cls_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1
