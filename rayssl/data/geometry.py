"""Back to the file's own voxel grid: one resampling inverts every geometric preprocessing step.

Reorientation, resampling to a target spacing and the foreground crop each relate the preprocessed grid
to the file's grid by an affine map of voxel indices, and both grids carry their voxel-to-world affine.
So ``inv(preprocessed affine) @ file affine`` takes every voxel of the file's grid to where it lies in
the preprocessed volume, and one interpolation there (linear for probabilities, nearest for label maps)
gives a volume with exactly the file's shape, on exactly its affine. Voxels the preprocessing cropped away
get a fill value (background).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


# Kept over MONAI's SpatialResample / ResampleToMatch, which give the same linear values (within 4e-6) but build the
# whole float64 sampling grid at once (peak RSS 5.3 GB against 3.5 GB here for a 512x512x300 label map), have no
# per-channel fill (padding zeros / border / reflection only), and break nearest-neighbour ties differently: on
# tests/test_geometry.py's oblique round trip 0.5% of the label voxels change and agreement with the file's labels
# drops from 0.9993 to 0.9942 (run slab by slab, its anisotropic case falls below the test's 0.995).
def to_source_grid(values: np.ndarray | torch.Tensor, affine: np.ndarray, source_affine: np.ndarray,
                   source_shape: Sequence[int], mode: str = "linear", fill: float | Sequence[float] = 0.0,
                   chunk_voxels: int = 2**24) -> np.ndarray:
    """Resample ``values`` from the preprocessed grid onto the file's grid.

    Args:
        values: ``[C, *spatial]`` on the grid of ``affine`` (2D or 3D).
        affine: voxel-to-world affine of ``values`` (4x4).
        source_affine: voxel-to-world affine of the file (4x4).
        source_shape: the file's spatial shape.
        mode: ``"linear"`` (probabilities) or ``"nearest"`` (label maps).
        fill: value of file voxels outside the preprocessed volume, one for all channels or one per channel
            (e.g. 1 for the background probability, 0 for the others).
        chunk_voxels: file voxels resampled at once (bounds the sampling grid's memory).

    Returns:
        ``[C, *source_shape]`` float32 (the dtype of ``values`` for ``nearest``).
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    x = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    dims = x.ndim - 1
    if dims not in (2, 3) or len(source_shape) != dims:
        raise ValueError(f"values [C, *spatial] with 2 or 3 spatial axes like source_shape {tuple(source_shape)}, "
                         f"got {tuple(x.shape)}")
    out_dtype = x.dtype if mode == "nearest" else torch.float32
    fills = torch.as_tensor(np.broadcast_to(np.asarray(fill, np.float64), (x.shape[0],)).copy(), dtype=torch.float64)
    x = x.to(torch.float64) - fills.view(-1, *[1] * dims)  # zero padding outside, then + fill
    m = np.linalg.inv(np.asarray(affine, np.float64)) @ np.asarray(source_affine, np.float64)
    if dims == 2:  # the 2D affines are 4x4 too: keep the in-plane part
        m = m[np.ix_([0, 1, 3], [0, 1, 3])]
    m = torch.as_tensor(m)
    size = torch.tensor(x.shape[1:], dtype=torch.float64)
    scale = 2.0 / torch.clamp(size - 1, min=1)
    out = torch.empty((x.shape[0], *source_shape), dtype=torch.float64)
    rows = max(1, chunk_voxels // max(1, int(np.prod(source_shape[1:]))))
    for start in range(0, source_shape[0], rows):
        first = torch.arange(start, min(start + rows, source_shape[0]), dtype=torch.float64)
        idx = torch.meshgrid(first, *[torch.arange(n, dtype=torch.float64) for n in source_shape[1:]], indexing="ij")
        ones = torch.ones_like(idx[0])
        points = torch.stack([*idx, ones], dim=-1) @ m.T  # [..., dims + 1]: file voxel -> preprocessed voxel
        grid = (points[..., :dims] * scale - 1.0).flip(-1)  # grid_sample wants (last axis, ..., first axis)
        sampled = F.grid_sample(x[None].float(), grid[None].float(), mode="bilinear" if mode == "linear" else "nearest",
                                padding_mode="zeros", align_corners=True)[0]
        out[:, start:start + len(first)] = sampled.double()
    out += fills.view(-1, *[1] * dims)
    return (out.round() if mode == "nearest" else out).to(out_dtype).numpy()
