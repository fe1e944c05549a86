"""Models Genesis corruptions (Zhou et al., MedIA 2021), vectorised over the batch and the blocks.

Order and default probabilities of the paper's code: flips (input and target), local pixel
shuffling, non-linear (Bezier) intensity transform, then in- or out-painting. Every sample of a
batch gets its own random draws; all randomness comes from one ``torch.Generator``.

Blocks and boxes are LongTensors ``[K, 1 + 2d]`` with rows ``(sample, origin_0.., size_0..)``;
row order is application order (a later block overwrites an earlier one where they overlap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import torch
from torch import Tensor


def _rand(*shape: int, generator: torch.Generator | None, device, dtype=torch.float32) -> Tensor:
    gen_device = generator.device if generator is not None else "cpu"
    return torch.rand(*shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def _select(n: int, which: Tensor | None, device) -> Tensor:
    # indices of the samples to transform
    if which is None:
        return torch.arange(n, device=device)
    if which.dtype != torch.bool or which.shape != (n,):
        raise ValueError(f"which must be a bool tensor of shape [{n}], got {which.dtype} {list(which.shape)}")
    return which.to(device).nonzero().flatten()


def _check_image(x: Tensor) -> None:
    if x.ndim not in (4, 5) or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor [N, C, H, W(, D)], got {x.dtype} {list(x.shape)}")


def _check_rows(rows: Tensor, x: Tensor, what: str) -> None:
    d = x.ndim - 2
    if rows.ndim != 2 or rows.shape[1] != 1 + 2 * d or rows.dtype != torch.long:
        raise ValueError(f"{what} must be a LongTensor [K, {1 + 2 * d}] of (sample, origin x{d}, size x{d})")
    if len(rows) == 0:
        return
    spatial = torch.tensor(x.shape[2:], device=rows.device)
    org, size = rows[:, 1:1 + d], rows[:, 1 + d:]
    if (rows[:, 0] < 0).any() or (rows[:, 0] >= x.shape[0]).any():
        raise ValueError(f"{what}: sample index out of range [0, {x.shape[0]})")
    if (size < 1).any() or (org < 0).any() or (org + size > spatial).any():
        raise ValueError(f"{what}: every box must have sizes >= 1 and lie inside {tuple(x.shape[2:])}")


def _draw_boxes(idx: Tensor, spatial: tuple[int, ...], lo: Tensor, hi: Tensor, margin: Tensor,
                generator: torch.Generator | None) -> Tensor:
    # idx: [K] sample of each box; sides ~ U{lo..hi}, origin ~ U{margin .. dim - side - margin} per axis
    k, device = len(idx), idx.device
    dims = torch.tensor(spatial, device=device)
    size = lo + (_rand(k, len(spatial), generator=generator, device=device) * (hi - lo + 1)).long()
    size = torch.minimum(size, dims)
    m = torch.minimum(margin.expand_as(size), (dims - size) // 2)
    org = m + (_rand(k, len(spatial), generator=generator, device=device) * (dims - size - 2 * m + 1)).long()
    return torch.cat([idx[:, None], org, size], dim=1)


def _box_voxels(rows: Tensor, spatial: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Flat voxel indices (``sample * V + voxel``) of every box, and the box id of each entry."""
    d, device = len(spatial), rows.device
    org, size = rows[:, 1:1 + d], rows[:, 1 + d:]
    strides = torch.tensor([math.prod(spatial[a + 1:]) for a in range(d)], device=device)
    base = rows[:, 0] * math.prod(spatial) + (org * strides).sum(dim=1)  # [K] flat index of each origin
    # offsets inside a box depend only on its shape: build them once per distinct shape
    radix = max(spatial) + 1
    code = (size * torch.tensor([radix ** (d - 1 - a) for a in range(d)], device=device)).sum(dim=1)
    ucode, inv = torch.unique(code, return_inverse=True)
    usize = torch.stack([(ucode // radix ** (d - 1 - a)) % radix for a in range(d)], dim=1)  # [U, d]
    uvol = usize.prod(dim=1)
    tbox = torch.repeat_interleave(torch.arange(len(ucode), device=device), uvol)
    local = torch.arange(len(tbox), device=device) - (uvol.cumsum(0) - uvol)[tbox]
    offset = torch.zeros_like(local)
    for a in reversed(range(d)):  # row-major decomposition of the index inside the box
        s = usize[tbox, a]
        offset += (local % s) * strides[a]
        local = local // s
    vol, tstart = uvol[inv], (uvol.cumsum(0) - uvol)[inv]  # [K] entries, table start of each box
    start = vol.cumsum(0) - vol
    # per-entry box id and table position as cumulative sums (cheaper than repeat_interleave)
    step = torch.zeros(int(vol.sum()), dtype=torch.long, device=device)
    step[start[1:]] = 1
    bid = step.cumsum(0)  # [T]
    step.fill_(1)
    step[start] = tstart - torch.cat([tstart.new_zeros(1), tstart[:-1] + vol[:-1] - 1])
    pos = step.cumsum(0)
    return base[bid] + offset[pos], bid


def boxes_to_mask(boxes: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Union of boxes as a bool mask ``[N, *spatial]`` for an image batch of ``shape [N, C, *spatial]``."""
    mask = torch.zeros(shape[0] * math.prod(shape[2:]), dtype=torch.bool, device=boxes.device)
    flat, _ = _box_voxels(boxes, tuple(shape[2:]))
    mask[flat] = True
    return mask.view(shape[0], *shape[2:])


# ----------------------------------------------------------------------------- flips


def flip(x: Tensor, axes: Tensor) -> Tensor:
    """Flip each sample along the spatial axes where ``axes`` ``[N, d]`` (bool) is set."""
    out = x.clone()
    for pattern in axes.unique(dim=0):  # at most 2^d distinct patterns
        dims = [2 + a for a in range(len(pattern)) if pattern[a]]
        if dims:
            sel = (axes == pattern).all(dim=1)
            out[sel] = x[sel].flip(dims)
    return out


# ----------------------------------------------------------------------------- local pixel shuffling


def shuffle_blocks(x: Tensor, blocks: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Permute the voxels (all channels together) of each block among themselves.

    Values are read from the input, so overlapping blocks resolve as "last block wins": a voxel
    ends up holding an input voxel of the last block that covers it.

    Args:
        x: ``[N, C, *spatial]``.
        blocks: ``[K, 1 + 2d]`` rows ``(sample, origin.., size..)``.
        generator: source of the permutations.
    """
    _check_image(x)
    _check_rows(blocks, x, "blocks")
    n, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    if len(blocks) == 0:
        return x.clone()
    flat, bid = _box_voxels(blocks.to(x.device), spatial)  # [T], sample * V + voxel
    # random permutation inside every block: sort by (block id, random key)
    keys = bid.double() + _rand(len(bid), generator=generator, device=x.device)
    if keys.device.type == "cpu":  # numpy's SIMD sort is several times faster than torch.sort on CPU
        order = torch.from_numpy(np.argsort(keys.numpy()))
    else:
        order = torch.argsort(keys)
    src = flat[order]
    owner = torch.full((n * math.prod(spatial),), -1, dtype=bid.dtype, device=x.device)
    owner.scatter_reduce_(0, flat, bid, reduce="amax")  # last block covering each voxel
    win = owner[flat] == bid
    dst, src = flat[win], src[win]
    volume = math.prod(spatial)
    if c > 1:  # flat indices into [N, C, V]
        dst, src = dst + (dst // volume) * (c - 1) * volume, src + (src // volume) * (c - 1) * volume
    xf = x.contiguous().view(-1)
    out = xf.clone()
    for ch in range(c):
        out[dst + ch * volume] = xf[src + ch * volume]
    return out.view_as(x)


def draw_shuffle_blocks(x: Tensor, generator: torch.Generator | None = None, n_blocks: int = 10000,
                        max_frac: float = 0.1, which: Tensor | None = None) -> Tensor:
    """``n_blocks`` random blocks per selected sample, sides ``1 .. max(1, int(dim * max_frac))``."""
    idx = _select(x.shape[0], which, x.device).repeat_interleave(n_blocks)
    spatial = tuple(x.shape[2:])
    hi = torch.tensor([max(1, int(s * max_frac)) for s in spatial], device=x.device)
    zero = torch.zeros(len(spatial), dtype=torch.long, device=x.device)
    return _draw_boxes(idx, spatial, torch.ones_like(hi), hi, zero, generator)


def local_pixel_shuffle(x: Tensor, generator: torch.Generator | None = None, n_blocks: int = 10000,
                        max_frac: float = 0.1, which: Tensor | None = None) -> Tensor:
    """Models Genesis local pixel shuffling of the samples selected by ``which`` (default all).

    Args:
        x: ``[N, C, *spatial]``.
        generator: random source.
        n_blocks: blocks per sample (10,000 in the paper).
        max_frac: largest block side as a fraction of the axis length (1/10 in the paper).
        which: optional bool ``[N]`` selecting the samples to shuffle.
    """
    _check_image(x)
    return shuffle_blocks(x, draw_shuffle_blocks(x, generator, n_blocks, max_frac, which), generator)


# ----------------------------------------------------------------------------- non-linear transform


def bezier_curve(points: Tensor, n: int = 1000) -> tuple[Tensor, Tensor]:
    """Sample a cubic Bezier curve at ``n`` evenly spaced ``t``.

    Args:
        points: control points ``[..., 4, 2]``.
        n: number of samples.

    Returns:
        ``(xs, ys)``, each ``[..., n]``, ordered by increasing ``t``.
    """
    if points.shape[-2:] != (4, 2):
        raise ValueError(f"points must be [..., 4, 2], got {list(points.shape)}")
    t = torch.linspace(0, 1, n, device=points.device, dtype=points.dtype)
    basis = torch.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3])  # [4, n]
    curve = torch.einsum("...kc,kn->...cn", points, basis)
    return curve[..., 0, :], curve[..., 1, :]


def apply_curve(x: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Piecewise-linear map of ``x`` ``[N, ...]`` through per-sample points ``xs, ys`` ``[N, n]`` (xs sorted)."""
    n = x.shape[0]
    v = x.reshape(n, -1).contiguous()
    i = torch.searchsorted(xs.contiguous(), v).clamp(1, xs.shape[1] - 1)  # xs[i-1] < v <= xs[i]
    x0, x1 = xs.gather(1, i - 1), xs.gather(1, i)
    y0, y1 = ys.gather(1, i - 1), ys.gather(1, i)
    w = ((v - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return torch.lerp(y0, y1, w).view_as(x)


def nonlinear_transform(x: Tensor, generator: torch.Generator | None = None, which: Tensor | None = None,
                        n: int = 1000) -> Tensor:
    """Bezier intensity map with control points (0,0), (r1,r2), (r3,r4), (1,1), inverted half the time.

    Both coordinates of such a curve are monotone in ``t`` (control values in [0, 1]), so the
    sorted samples define a monotone map of [0, 1] onto [0, 1] (0 -> 0, 1 -> 1, or reversed).
    """
    _check_image(x)
    idx = _select(x.shape[0], which, x.device)
    k = len(idx)
    if k == 0:
        return x.clone()
    r = _rand(k, 5, generator=generator, device=x.device)
    pts = torch.zeros(k, 4, 2, device=x.device)
    pts[:, 1:3] = r[:, :4].view(k, 2, 2)
    pts[:, 3] = 1
    xs, ys = bezier_curve(pts, n)
    xs, ys = xs.sort(dim=1).values, ys.sort(dim=1).values
    ys = torch.where(r[:, 4:] < 0.5, ys.flip(1), ys)  # inverted (decreasing) map
    out = x.clone()
    out[idx] = apply_curve(x[idx], xs.to(x.dtype), ys.to(x.dtype))
    return out


# ----------------------------------------------------------------------------- painting


def _count_boxes(k: int, first: int, extra: int, p: float, generator, device) -> Tensor:
    # per sample: ``first`` boxes, then up to ``extra`` more while U(0,1) < p (paper: p = 0.95)
    more = (_rand(k, extra, generator=generator, device=device) < p).long().cumprod(dim=1).sum(dim=1)
    return first + more


def draw_paint_boxes(x: Tensor, mode: str, generator: torch.Generator | None = None,
                     which: Tensor | None = None) -> Tensor:
    """Random boxes as in the paper: ``inpaint`` up to 5 boxes, sides ``dim/6 .. dim/3``;
    ``outpaint`` 1 to 5 kept boxes of side ``dim - (3 .. 4) dim / 7``; 3-voxel margins."""
    if mode not in ("inpaint", "outpaint"):
        raise ValueError(f"mode={mode!r} must be 'inpaint' or 'outpaint'")
    idx = _select(x.shape[0], which, x.device)
    spatial = tuple(x.shape[2:])
    dims = torch.tensor(spatial, device=x.device)
    if mode == "inpaint":
        count = _count_boxes(len(idx), 0, 5, 0.95, generator, x.device)
        lo, hi = (dims // 6).clamp_min(1), (dims // 3).clamp_min(1)
    else:
        count = _count_boxes(len(idx), 1, 4, 0.95, generator, x.device)
        lo, hi = (dims - 4 * dims // 7).clamp_min(1), (dims - 3 * dims // 7).clamp_min(1)
    margin = torch.full_like(dims, 3)
    return _draw_boxes(idx.repeat_interleave(count), spatial, lo, hi, margin, generator)


def paint_boxes(x: Tensor, boxes: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor:
    """``inpaint``: U(0,1) noise inside the boxes; ``outpaint``: the boxes' samples become noise
    except inside their boxes (samples without a box are left unchanged)."""
    _check_image(x)
    _check_rows(boxes, x, "boxes")
    if mode not in ("inpaint", "outpaint"):
        raise ValueError(f"mode={mode!r} must be 'inpaint' or 'outpaint'")
    if len(boxes) == 0:
        return x.clone()
    mask = boxes_to_mask(boxes.to(x.device), tuple(x.shape))[:, None]  # [N, 1, *spatial]
    noise = _rand(*x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if mode == "inpaint":
        return torch.where(mask, noise, x)
    painted = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    painted[boxes[:, 0].to(x.device)] = True
    return torch.where(mask | ~painted.view(-1, *[1] * (x.ndim - 1)), x, noise)


def inpaint(x: Tensor, generator: torch.Generator | None = None, which: Tensor | None = None) -> Tensor:
    """In-painting: up to 5 random boxes per selected sample filled with U(0,1) noise."""
    _check_image(x)
    return paint_boxes(x, draw_paint_boxes(x, "inpaint", generator, which), "inpaint", generator)


def outpaint(x: Tensor, generator: torch.Generator | None = None, which: Tensor | None = None) -> Tensor:
    """Out-painting: each selected sample becomes U(0,1) noise except inside 1-5 large boxes."""
    _check_image(x)
    return paint_boxes(x, draw_paint_boxes(x, "outpaint", generator, which), "outpaint", generator)


# ----------------------------------------------------------------------------- pipeline


@dataclass
class GenesisCorruption:
    """The Models Genesis corruption pipeline with the paper's default probabilities.

    Args:
        flip_prob: probability of each of up to ``max_flips`` successive flips (random axis).
        max_flips: most flips per sample.
        shuffle_prob: probability of local pixel shuffling.
        shuffle_blocks: blocks per shuffled sample.
        shuffle_max_frac: largest block side as a fraction of the axis length.
        nonlinear_prob: probability of the Bezier intensity transform.
        paint_prob: probability of painting.
        inpaint_rate: probability that painting is in-painting (else out-painting).
    """

    flip_prob: float = 0.4
    max_flips: int = 3
    shuffle_prob: float = 0.5
    shuffle_blocks: int = 10000
    shuffle_max_frac: float = 0.1
    nonlinear_prob: float = 0.9
    paint_prob: float = 0.9
    inpaint_rate: float = 0.2

    def __post_init__(self):
        for name in ("flip_prob", "shuffle_prob", "nonlinear_prob", "paint_prob", "inpaint_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be a probability in [0, 1]")
        if self.max_flips < 0 or self.shuffle_blocks < 0:
            raise ValueError(f"max_flips={self.max_flips} and shuffle_blocks={self.shuffle_blocks} must be >= 0")
        if not 0.0 < self.shuffle_max_frac <= 1.0:
            raise ValueError(f"shuffle_max_frac={self.shuffle_max_frac} must be in (0, 1]")

    def plan(self, n: int, spatial_dims: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-sample decisions: ``n_flips [N]``, net ``flip_axes [N, d]`` and bool ``shuffle``,
        ``nonlinear``, ``inpaint``, ``outpaint`` ``[N]``."""
        u = _rand(n, self.max_flips + 4, generator=generator, device="cpu")
        f = self.max_flips
        n_flips = (u[:, :f] < self.flip_prob).long().cumprod(dim=1).sum(dim=1)  # while U < p and count < max
        axis = (_rand(n, f, generator=generator, device="cpu") * spatial_dims).long()  # [N, f]
        used = torch.arange(f) < n_flips[:, None]
        counts = torch.zeros(n, spatial_dims, dtype=torch.long).scatter_add_(1, axis, used.long())
        paint = u[:, f + 2] < self.paint_prob
        inp = u[:, f + 3] < self.inpaint_rate
        return {"n_flips": n_flips, "flip_axes": counts % 2 == 1, "shuffle": u[:, f] < self.shuffle_prob,
                "nonlinear": u[:, f + 1] < self.nonlinear_prob, "inpaint": paint & inp, "outpaint": paint & ~inp}

    def apply(self, x: Tensor, plan: dict[str, Tensor], generator: torch.Generator | None = None):
        """Corrupt ``x`` following ``plan``; returns ``(corrupted input, target)``."""
        _check_image(x)
        dev = x.device
        target = flip(x, plan["flip_axes"].to(dev))
        out = local_pixel_shuffle(target, generator, self.shuffle_blocks, self.shuffle_max_frac, plan["shuffle"])
        out = nonlinear_transform(out, generator, plan["nonlinear"])
        out = inpaint(out, generator, plan["inpaint"])
        out = outpaint(out, generator, plan["outpaint"])
        return out, target

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Corrupt a batch ``x`` ``[N, C, *spatial]`` with values in [0, 1].

        Returns:
            ``(corrupted input, target)``; the target is ``x`` with the same flips.
        """
        _check_image(x)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"x values must lie in [0, 1] (Models Genesis scaling), got [{lo:.3g}, {hi:.3g}]")
        return self.apply(x, self.plan(x.shape[0], x.ndim - 2, generator), generator)
