"""Fixed 2D / 3D sine-cosine position embeddings for ViT / MAE.

Layout per token (temperature 1e4, ``omega_k = 1 / 1e4 ** (k / F)`` with ``F`` terms per axis):

* 2D (``F = D / 4``): ``[sin(w), cos(w), sin(h), cos(h)]`` -- facebookresearch/mae.
* 3D (``F = D / 6``): ``[sin(w), cos(w), sin(h), cos(h), sin(d), cos(d)]`` -- the MAE self
  pre-training code (SelfMedMAE) and MONAI's ``build_sincos_position_embedding``,

where ``h, w, d`` are the token's indices along spatial axes 0, 1, 2 and tokens are ordered
row-major over the grid (as ``Conv{2,3}d`` patch embedding + ``flatten(2)`` produces them).
Written in numpy (MONAI's version returns a torch Parameter and has no cls row).
"""

from __future__ import annotations

import numpy as np

TEMPERATURE = 10000.0


def _axis_embed(pos: np.ndarray, n_terms: int) -> np.ndarray:
    # pos: [M] positions along one axis -> [M, 2 * n_terms] = [sin, cos]
    omega = 1.0 / TEMPERATURE ** (np.arange(n_terms, dtype=np.float64) / n_terms)
    out = np.outer(pos.astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed(embed_dim: int, grid_size: tuple[int, ...], cls_token: bool = True) -> np.ndarray:
    """Fixed sine-cosine position embedding for a 2D or 3D token grid.

    Args:
        embed_dim: token width ``D``; must divide by 4 (2D) or 6 (3D).
        grid_size: tokens per spatial axis, 2 or 3 positive ints.
        cls_token: prepend an all-zero row for the cls token.

    Returns:
        float32 array ``[(1 if cls_token else 0) + prod(grid_size), D]``.
    """
    grid_size = tuple(int(g) for g in grid_size)
    dims = len(grid_size)
    if dims not in (2, 3) or min(grid_size) < 1:
        raise ValueError(f"grid_size must be 2 or 3 positive ints, got {grid_size}")
    if embed_dim < 1 or embed_dim % (2 * dims) != 0:
        raise ValueError(
            f"embed_dim={embed_dim} must be divisible by {2 * dims} for a {dims}D sin-cos position "
            f"embedding (D/{2 * dims} sin + D/{2 * dims} cos terms per axis)"
        )
    n_terms = embed_dim // (2 * dims)
    coords = np.meshgrid(*[np.arange(g) for g in grid_size], indexing="ij")  # dims x grid
    coords = [c.reshape(-1) for c in coords]
    order = [1, 0] + list(range(2, dims))  # axis 1 first, as facebookresearch/mae and SelfMedMAE
    emb = np.concatenate([_axis_embed(coords[a], n_terms) for a in order], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return emb.astype(np.float32)
