"""Models Genesis (Zhou et al., MedIA 2021) corruptions, vectorised over the batch and the blocks. (The
restoration objective is :mod:`rayssl.pretrain.genesis`, the network :mod:`rayssl.models.genesis_unet`, its
chest CT crop rule ``genesis`` sampling in :mod:`rayssl.data.patches`.) Torch and numpy only, plus the pure-Python
probabilities of :mod:`rayssl.config.corruption` (benchmarks/gpu_step.py runs them bare).

Order and default probabilities of the paper's code: flips (input and target), local pixel
shuffling, non-linear (Bezier) intensity transform, then in- or out-painting. Every sample of a
batch gets its own random draws; all randomness comes from one ``torch.Generator``.

Blocks and boxes are LongTensors ``[K, 1 + 2d]`` with rows ``(sample, origin_0.., size_0..)``;
row order is application order (a later block overwrites an earlier one where they overlap).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rayssl.config.corruption import CorruptionProbs


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
    # idx: [K] sample of each box; sides ~ U{lo..hi}, origin ~ U{margin .. dim - side - margin} per axis.
    # Worked out axis-major ([d, K]: long rows for the elementwise ops), returned as a [K, 1 + 2d] view.
    k, device, d = len(idx), idx.device, len(spatial)
    dims = torch.tensor(spatial, device=device)[:, None]
    lo, hi, margin = lo[:, None], hi[:, None], margin[:, None]
    size = torch.minimum(lo + (_rand(d, k, generator=generator, device=device) * (hi - lo + 1)).long(), dims)
    free = dims - size  # room left on the axis
    if bool(margin.any()):
        m = torch.minimum(margin, free >> 1)  # margins shrink to fit
        org = m + (_rand(d, k, generator=generator, device=device) * (free - 2 * m + 1)).long()
    else:
        org = (_rand(d, k, generator=generator, device=device) * (free + 1)).long()
    return torch.cat([idx[None], org, size]).T


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


def _box_offsets(shape: list[int], strides: list[int], device) -> Tensor:
    # flat offsets of the voxels of a box of this shape from its origin, row-major
    off = torch.zeros((), dtype=torch.long, device=device)
    for s, st in zip(shape, strides):
        off = off[..., None] + torch.arange(s, device=device) * st
    return off.reshape(-1)


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
    return _shuffle_blocks(x, blocks, generator)


def _shuffle_blocks(x: Tensor, blocks: Tensor, generator: torch.Generator | None) -> Tensor:
    if len(blocks) == 0:
        return x.clone()
    if x.device.type == "cpu":
        return _shuffle_blocks_numpy(x, blocks.cpu(), generator)
    return _shuffle_blocks_torch(x, blocks, generator)


@functools.lru_cache(maxsize=1024)
def _np_box_offsets(shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    # flat offsets of the voxels of a box of this shape from its origin, row-major (read-only)
    off = np.zeros((), dtype=np.int64)
    for s, st in zip(shape, strides):
        off = off[..., None] + np.arange(s) * st
    off = off.reshape(-1)
    off.flags.writeable = False
    return off


def _shuffle_blocks_numpy(x: Tensor, blocks: Tensor, generator: torch.Generator | None) -> Tensor:
    # CPU path. Every block's permutation is a row sort of random keys; overlaps are resolved by
    # a scatter-max of a packed (block rank, source voxel) value into each destination voxel.
    n, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    d, k, volume = len(spatial), len(blocks), math.prod(spatial)
    strides = tuple(math.prod(spatial[a + 1:]) for a in range(d))
    b = np.ascontiguousarray(blocks.numpy().T)  # [1 + 2d, K]: sample, origin.., size..
    size = b[1 + d:]
    base = np.array(strides) @ b[1:1 + d]  # block origin, flat inside its sample
    counts = np.bincount(b[0], minlength=n)
    samples = np.flatnonzero(counts)  # only samples with blocks are worked on, renumbered 0..ns-1
    smp = (np.cumsum(counts > 0) - 1)[b[0]] if len(samples) < n else b[0]
    counts, ns = counts[samples], len(samples)
    # rank of each block among its sample's blocks, from 1, in application order
    by_sample = np.argsort(smp.astype(np.min_scalar_type(ns)), kind="stable")
    rank = np.empty(k, dtype=np.int64)
    rank[by_sample] = np.arange(1, k + 1) - np.repeat(np.cumsum(counts) - counts, counts)
    # Owner value of an entry (block voxel): rank << vb | source voxel (flat inside the sample).
    # Its maximum over the entries of a destination voxel comes from the last block covering it;
    # the initial value (rank 0, the voxel itself) keeps uncovered voxels. int32 when it fits.
    vb = max(1, (volume - 1).bit_length())
    vt = np.int32 if int(rank.max()).bit_length() + vb <= 31 else np.int64
    it = np.int32 if ns * volume < 2 ** 31 else np.int64  # destination voxel index
    src_base = ((rank << vb) + base).astype(vt)
    dst_base = (smp * volume + base).astype(it)
    # group the blocks by shape (stable: in block order inside a group)
    code = size[0].copy()
    for a in range(1, d):
        code *= spatial[a] + 1
        code += size[a]
    by_shape = np.argsort(code.astype(np.min_scalar_type(int(code.max()))), kind="stable")
    code = code[by_shape]
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]).tolist() + [k]
    gen_dev = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=gen_dev))
    bits = np.random.PCG64(seed)
    owner = np.tile(np.arange(volume, dtype=vt), ns)
    # group by group, so that the working set stays in cache
    for first, last in zip(starts[:-1], starts[1:]):
        idx = by_shape[first:last]  # the kc blocks of this shape, each m voxels
        shape = tuple(size[:, idx[0]].tolist())
        kc, m = last - first, math.prod(shape)
        off = _np_box_offsets(shape, strides)
        # entries (block voxels) are laid out [m, kc] (voxel-major): long inner loops for numpy
        dst = np.add(off.astype(it)[:, None], dst_base[idx])
        if m == 1:
            src = src_base[idx]
        else:
            # key = (32 - lb) random bits << lb | voxel index inside the block; sorting a block's row of
            # keys orders its voxel indices uniformly at random (ties, with probability below
            # m^2 / 2^(33 - lb), fall back to index order). Raw PCG64 output, seeded from the
            # generator, costs a fraction of torch.randint.
            lb = (m - 1).bit_length()
            key = bits.random_raw((kc * m + 1) // 2).view(np.uint32)[:kc * m].reshape(kc, m)
            key <<= lb
            key |= np.arange(m, dtype=np.uint32)
            key.sort(axis=1)
            key &= (1 << lb) - 1  # row j = permutation of block j: voxel r takes voxel key[j, r]
            src = np.add(off.astype(vt).take(key.T), src_base[idx])
        np.maximum.at(owner, dst.reshape(-1), src.reshape(-1))
    owner &= (1 << vb) - 1  # source voxel of every voxel of the ns samples
    # gather on the raw bytes (numpy has no bfloat16)
    raw_dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    xv = x.detach().contiguous().view(raw_dtype).numpy().reshape(n, c, volume)
    ov = out.detach().view(raw_dtype).numpy().reshape(n, c, volume)
    slot = np.full(n, -1)
    slot[samples] = np.arange(ns)
    for s_i, i in enumerate(slot.tolist()):
        if i < 0:
            ov[s_i] = xv[s_i]
        else:
            np.take(xv[s_i], owner[i * volume:(i + 1) * volume], axis=1, out=ov[s_i])
    return out


def _shuffle_blocks_torch(x: Tensor, blocks: Tensor, generator: torch.Generator | None) -> Tensor:
    # pure torch path (CUDA): one sort of packed int64 keys over all block voxels
    n, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    d, dev, k = len(spatial), x.device, len(blocks)
    volume = math.prod(spatial)
    strides = [math.prod(spatial[a + 1:]) for a in range(d)]
    blocks = blocks.to(dev)
    size = blocks[:, 1 + d:]
    vol = size.prod(dim=1)  # [K]
    base = blocks[:, 0] * volume + (blocks[:, 1:1 + d] * torch.tensor(strides, device=dev)).sum(dim=1)
    total = int(vol.sum())
    # Per block voxel (entry) two int64 keys. Sort key (block id, random bits, voxel): sorting it
    # permutes every block's voxels randomly among themselves. Owner key (block id, index inside
    # the block): its maximum over the entries of a voxel names the last block covering it.
    vb, bb = max(1, (n * volume - 1).bit_length()), max(1, (k - 1).bit_length())
    lb = max(1, (int(vol.max()) - 1).bit_length())
    rb = min(30, 63 - vb - bb)
    if rb < 16:
        raise ValueError(f"{k} blocks on {n} samples are too many for one call; split the batch")
    sort_key = torch.empty(total, dtype=torch.long, device=dev)
    owner_key = torch.empty(total, dtype=torch.long, device=dev)
    # entries are laid out shape by shape, so each distinct block shape is one broadcast
    radix = max(spatial) + 1
    code = (size * torch.tensor([radix ** (d - 1 - a) for a in range(d)], device=dev)).sum(dim=1)
    shapes, inv, counts = torch.unique(code, return_inverse=True, return_counts=True)
    by_shape = torch.argsort(inv, stable=True)
    lo, first = 0, 0
    for code_u, kc in zip(shapes.tolist(), counts.tolist()):
        shape = [(code_u // radix ** (d - 1 - a)) % radix for a in range(d)]
        m = math.prod(shape)
        idx = by_shape[first:first + kc]  # blocks of this shape, in block order
        torch.add(((idx << (rb + vb)) + base[idx])[:, None], _box_offsets(shape, strides, dev),
                  out=sort_key[lo:lo + kc * m].view(kc, m))
        torch.add((idx << lb)[:, None], torch.arange(m, device=dev), out=owner_key[lo:lo + kc * m].view(kc, m))
        lo, first = lo + kc * m, first + kc
    vmask = (1 << vb) - 1
    flat = sort_key & vmask  # sample * V + voxel of each entry
    gen_dev = generator.device if generator is not None else "cpu"
    sort_key += torch.randint(0, 1 << rb, (total,), generator=generator, device=gen_dev).to(dev) << vb
    owner = torch.full((n * volume,), -1, dtype=torch.long, device=dev)
    owner.scatter_reduce_(0, flat, owner_key, reduce="amax")
    ranked = torch.sort(sort_key).values
    dst = (owner >= 0).nonzero().squeeze(1)  # covered voxels
    win = owner[dst]
    b, li = win >> lb, win & ((1 << lb) - 1)
    # block b's voxels occupy ranks [rank0[b], rank0[b] + vol[b]) of the sorted keys; the voxel
    # with index li inside the block takes the one ranked li-th
    rank0 = vol.cumsum(0) - vol
    src = ranked[rank0[b] + li] & vmask
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
    chunk = 64  # samples per call, so that the packed int64 keys of the torch path keep enough random bits
    if x.shape[0] > chunk:
        _select(x.shape[0], which, x.device)  # validate ``which`` once
        parts = [local_pixel_shuffle(x[i:i + chunk], generator, n_blocks, max_frac,
                                     None if which is None else which[i:i + chunk])
                 for i in range(0, x.shape[0], chunk)]
        return torch.cat(parts)
    blocks = draw_shuffle_blocks(x, generator, n_blocks, max_frac, which)  # valid by construction
    return _shuffle_blocks(x, blocks, generator)


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


def apply_curve(x: Tensor, xs: Tensor, ys: Tensor, bins: int = 4097) -> Tensor:
    """Piecewise-linear map of ``x`` ``[N, ...]`` through per-sample points ``xs, ys`` ``[N, n]`` (xs sorted).

    The map is first tabulated on ``bins`` evenly spaced inputs in [0, 1] (a small
    ``searchsorted``), so each voxel costs an index and a lerp instead of a binary search.
    Inputs are clamped to [0, 1].
    """
    return _apply_curve_(x.clone(), torch.arange(x.shape[0]), xs, ys, bins)


def _apply_curve_(out: Tensor, idx: Tensor, xs: Tensor, ys: Tensor, bins: int) -> Tensor:
    # in place: sample idx[i] of ``out`` goes through curve i
    k = len(idx)
    dtype = torch.promote_types(out.dtype, torch.float32)  # fp16/bf16 cannot hold bin positions
    if xs.device.type == "cpu":  # np.interp: the same table, a fraction of the time
        grid = np.linspace(0, 1, bins)
        table = np.stack([np.interp(grid, a, b) for a, b in zip(xs.numpy(), ys.numpy())])
        table = torch.from_numpy(table).to(dtype)
    else:
        grid = torch.linspace(0, 1, bins, device=xs.device, dtype=xs.dtype).expand(k, bins).contiguous()
        i = torch.searchsorted(xs.contiguous(), grid).clamp(1, xs.shape[1] - 1)  # xs[i-1] < g <= xs[i]
        x0, x1 = xs.gather(1, i - 1), xs.gather(1, i)
        w = ((grid - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
        table = torch.lerp(ys.gather(1, i - 1), ys.gather(1, i), w).to(dtype)  # [k, bins]
    # bin j (pos in [j, j + 1)) maps to table[j] + slope[j] * (pos - j); the zero slope of the
    # last bin serves pos = bins - 1 (input 1)
    slope = torch.cat([table.diff(dim=1), table.new_zeros(k, 1)], dim=1)
    if out.device.type == "cpu" and out.dtype in (torch.float32, torch.float64) and out.is_contiguous():
        # numpy, one sample at a time, in place: ~8 passes over the voxels, no temporaries but the bins
        table, slope = table.numpy(), slope.numpy()
        flat = out.detach().view(out.shape[0], -1).numpy()
        for i, s in enumerate(idx.tolist()):
            pos = np.clip(flat[s], 0, 1, out=flat[s])
            pos *= bins - 1
            j = pos.astype(np.intp)
            np.subtract(pos, j, out=pos, dtype=pos.dtype)  # fraction inside the bin
            pos *= slope[i].take(j)
            pos += table[i].take(j)
        return out
    pos = out[idx].reshape(k, -1).to(dtype, copy=True).clamp_(0, 1).mul_(bins - 1)
    j = pos.long()
    pos -= j
    out[idx] = table.gather(1, j).addcmul_(slope.gather(1, j), pos).to(out.dtype).view_as(out[idx])
    return out


def nonlinear_transform(x: Tensor, generator: torch.Generator | None = None, which: Tensor | None = None,
                        n: int = 1000) -> Tensor:
    """Bezier intensity map with control points (0,0), (r1,r2), (r3,r4), (1,1), inverted half the time.

    Both coordinates of such a curve are monotone in ``t`` (control values in [0, 1]), so the
    sorted samples define a monotone map of [0, 1] onto [0, 1] (0 -> 0, 1 -> 1, or reversed).
    """
    _check_image(x)
    return _nonlinear_(x.clone(), generator, which, n)


def _nonlinear_(x: Tensor, generator: torch.Generator | None, which: Tensor | None, n: int = 1000) -> Tensor:
    # in place
    idx = _select(x.shape[0], which, x.device)
    k = len(idx)
    if k == 0:
        return x
    r = _rand(k, 5, generator=generator, device=x.device)
    pts = torch.zeros(k, 4, 2, device=x.device)
    pts[:, 1:3] = r[:, :4].view(k, 2, 2)
    pts[:, 3] = 1
    xs, ys = bezier_curve(pts, n)
    xs, ys = xs.sort(dim=1).values, ys.sort(dim=1).values
    ys = torch.where(r[:, 4:] < 0.5, ys.flip(1), ys)  # inverted (decreasing) map
    return _apply_curve_(x, idx, xs, ys, 4097)


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
    return _paint_(x.clone(), boxes, mode, generator)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device, dtype) -> Tensor:
    # U(0, 1) noise; on CPU numpy's PCG64 (seeded from the generator) is faster than torch.rand
    if torch.device(device).type != "cpu" or dtype not in (torch.float32, torch.float64):
        return _rand(*shape, generator=generator, device=device, dtype=dtype)
    gen_dev = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=gen_dev))
    rng = np.random.Generator(np.random.PCG64(seed))
    return torch.from_numpy(rng.random(shape, dtype=np.float32 if dtype == torch.float32 else np.float64))


def _paint_(x: Tensor, boxes: Tensor, mode: str, generator: torch.Generator | None) -> Tensor:
    # in place. A sample has at most a few boxes, so box by box slicing beats building a mask.
    if len(boxes) == 0:
        return x
    d = x.ndim - 2
    sel, local = torch.unique(boxes[:, 0], return_inverse=True)  # painted samples
    noise = _uniform((len(sel), *x.shape[1:]), generator, x.device, x.dtype)
    for (s, *box), i in zip(boxes.tolist(), local.tolist()):
        region = (slice(None), *[slice(o, o + size) for o, size in zip(box[:d], box[d:])])
        if mode == "inpaint":
            x[s][region] = noise[i][region]
        else:  # the union of the boxes keeps the input
            noise[i][region] = x[s][region]
    if mode == "outpaint":
        x[sel.to(x.device)] = noise.to(x.device)
    return x


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
class GenesisCorruption(CorruptionProbs):
    """The Models Genesis corruption pipeline with the paper's default probabilities.

    Args:
        flip_prob, shuffle_prob, nonlinear_prob, paint_prob, inpaint_rate: the probabilities of
            :class:`~rayssl.config.corruption.CorruptionProbs` (flip: each of up to ``max_flips`` successive
            flips along a random axis; painting: in- or out-painting, in-painting with ``inpaint_rate``).
        max_flips: most flips per sample.
        shuffle_blocks: blocks per shuffled sample.
        shuffle_max_frac: largest block side as a fraction of the axis length.
    """

    max_flips: int = 3
    shuffle_blocks: int = 10000
    shuffle_max_frac: float = 0.1

    def __post_init__(self):
        super().__post_init__()  # the probabilities lie in [0, 1]
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
        # ``out`` is a new tensor: the remaining steps work on it in place
        _nonlinear_(out, generator, plan["nonlinear"])
        for mode in ("inpaint", "outpaint"):
            _paint_(out, draw_paint_boxes(out, mode, generator, plan[mode]), mode, generator)
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
