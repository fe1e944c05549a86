"""Models Genesis corruptions: each step's contract, the pipeline's probabilities and shapes."""

import math

import pytest
import torch

from rayssl.pretrain import genesis_corruptions as G
from rayssl.pretrain.genesis_corruptions import GenesisCorruption


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def unique_volume(n=2, c=1, spatial=(12, 10, 8)):
    # distinct values in [0, 1): a value identifies its sample, channel and voxel
    x = torch.arange(n * c * math.prod(spatial), dtype=torch.float64).view(n, c, *spatial)
    return x / x.numel()


def boxes_to_mask(boxes, shape):
    """Reference: the union of the boxes ``(sample, origin.., size..)`` as a bool mask ``[N, *spatial]``."""
    d = len(shape) - 2
    mask = torch.zeros(shape[0], *shape[2:], dtype=torch.bool)
    for s, *box in boxes.tolist():
        mask[(s, *[slice(o, o + n) for o, n in zip(box[:d], box[d:])])] = True
    return mask


def three_sigma(p, n):
    return 3 * math.sqrt(p * (1 - p) / n) + 1e-9


# ----------------------------------------------------------------------------- Bezier / non-linear


def test_bezier_curve_endpoints_and_midpoint():
    pts = torch.tensor([[0.0, 0.0], [0.2, 0.9], [0.7, 0.1], [1.0, 1.0]])
    xs, ys = G.bezier_curve(pts, n=101)
    assert xs.shape == ys.shape == (101,)
    assert (xs[0], ys[0], xs[-1], ys[-1]) == (0.0, 0.0, 1.0, 1.0)
    mid = (pts[0] + 3 * pts[1] + 3 * pts[2] + pts[3]) / 8  # B(1/2)
    torch.testing.assert_close(torch.stack([xs[50], ys[50]]), mid)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4, 2\]"):
        G.bezier_curve(torch.zeros(3, 2))


def test_bezier_coordinates_monotone_for_unit_controls():
    r = torch.rand(2000, 4, generator=gen(1), dtype=torch.float64)
    pts = torch.zeros(2000, 4, 2, dtype=torch.float64)
    pts[:, 1:3] = r.view(-1, 2, 2)
    pts[:, 3] = 1
    xs, ys = G.bezier_curve(pts, n=500)
    assert (xs.diff(dim=1) >= -1e-12).all() and (ys.diff(dim=1) >= -1e-12).all()


def test_nonlinear_transform_is_monotone_map_of_unit_interval():
    n = 400
    ramp = torch.linspace(0, 1, 1001).view(1, 1, 7, 143).repeat(n, 1, 1, 1)
    out = G.nonlinear_transform(ramp, gen(2))
    assert out.shape == ramp.shape and out.min() >= 0 and out.max() <= 1
    flat = out.view(n, -1)
    steps = flat.diff(dim=1)
    increasing = (steps >= -1e-6).all(dim=1)
    decreasing = (steps <= 1e-6).all(dim=1)
    assert (increasing | decreasing).all()  # every sample's map is monotone
    inv = ~increasing
    torch.testing.assert_close(flat[increasing][:, [0, -1]], torch.tensor([0.0, 1.0]).expand(int(increasing.sum()), 2))
    torch.testing.assert_close(flat[inv][:, [0, -1]], torch.tensor([1.0, 0.0]).expand(int(inv.sum()), 2))
    assert abs(inv.float().mean().item() - 0.5) < three_sigma(0.5, n)  # inverted half the time
    assert not torch.allclose(flat[0], flat[1])  # per-sample curves
    # only selected samples change
    which = torch.tensor([True, False] * (n // 2))
    part = G.nonlinear_transform(ramp, gen(3), which=which)
    assert torch.equal(part[~which], ramp[~which]) and not torch.equal(part[which], ramp[which])


def test_apply_curve_interpolates_between_points():
    xs = torch.tensor([[0.0, 0.5, 1.0]])
    ys = torch.tensor([[0.0, 0.8, 1.0]])
    v = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]])
    torch.testing.assert_close(G.apply_curve(v, xs, ys), torch.tensor([[0.0, 0.4, 0.8, 0.9, 1.0]]))


# ----------------------------------------------------------------------------- local pixel shuffling


def test_shuffle_explicit_blocks_preserves_multiset_and_outside():
    x = unique_volume(2, 2)
    x[:, 1] = x[:, 0] * 2 + 1  # channel 1 is a function of channel 0
    blocks = torch.tensor([[0, 0, 0, 0, 4, 3, 2], [0, 6, 5, 3, 3, 4, 5], [1, 2, 2, 2, 5, 5, 5]])
    out = G.shuffle_blocks(x, blocks, gen(4))
    inside = torch.zeros(2, 12, 10, 8, dtype=torch.bool)
    for s, a, b, c, sa, sb, sc in blocks.tolist():
        sl = (s, slice(None), slice(a, a + sa), slice(b, b + sb), slice(c, c + sc))
        before, after = x[sl].reshape(2, -1), out[sl].reshape(2, -1)
        assert torch.equal(before[0].sort().values, after[0].sort().values)  # same multiset
        assert not torch.equal(before, after)  # actually permuted
        inside[s, a:a + sa, b:b + sb, c:c + sc] = True
    mask = inside[:, None].expand_as(x)
    assert torch.equal(out[~mask], x[~mask])  # outside blocks untouched
    torch.testing.assert_close(out[:, 1], out[:, 0] * 2 + 1)  # channels moved together
    assert torch.equal(G.shuffle_blocks(x, blocks, gen(4)), out)  # deterministic under a seed
    assert not torch.equal(G.shuffle_blocks(x, blocks, gen(5)), out)


def test_shuffle_overlapping_blocks_last_block_wins():
    x = unique_volume(1, 1, (8, 8, 4))
    first, last = [0, 0, 0, 0, 5, 5, 4], [0, 3, 3, 0, 4, 4, 4]
    out = G.shuffle_blocks(x, torch.tensor([first, last]), gen(6))
    last_vals = x[0, 0, 3:7, 3:7, :].reshape(-1)
    assert torch.equal(out[0, 0, 3:7, 3:7, :].reshape(-1).sort().values, last_vals.sort().values)
    first_vals = set(x[0, 0, :5, :5, :].reshape(-1).tolist())
    only_first = torch.ones(8, 8, 4, dtype=torch.bool)
    only_first[5:], only_first[:, 5:], only_first[3:7, 3:7] = False, False, False
    assert set(out[0, 0][only_first].tolist()) <= first_vals
    with pytest.raises(ValueError, match="inside"):
        G.shuffle_blocks(x, torch.tensor([[0, 6, 0, 0, 3, 1, 1]]), gen())
    with pytest.raises(ValueError, match="LongTensor"):
        G.shuffle_blocks(x, torch.tensor([[0, 0, 0, 0, 1, 1]]), gen())


@pytest.mark.parametrize("path, spatial, n_blocks, dtype", [
    ("numpy", (12, 10, 8), 60, torch.float64),  # int32 packed owner values
    ("numpy", (128, 128, 64), 2500, torch.float64),  # 12 rank bits + 20 voxel bits: int64 fallback
    ("numpy", (20, 14), 60, torch.float16),  # 2D, gathered as raw 16-bit values
    ("torch", (12, 10, 8), 60, torch.float64),  # the pure torch (CUDA) path, run on CPU
    ("torch", (20, 14), 60, torch.float64),
])
def test_shuffle_paths_each_voxel_from_last_covering_block(path, spatial, n_blocks, dtype):
    n = 3 if n_blocks < 1000 else 1
    x = unique_volume(n, 2, spatial)
    x[:, 1] = x[:, 0] * 2 + 1
    blocks = G.draw_shuffle_blocks(x, gen(19), n_blocks=n_blocks, max_frac=0.05 if n_blocks > 1000 else 0.4,
                                   which=torch.arange(n) != 1)
    blocks = blocks[torch.randperm(len(blocks), generator=gen(20))]  # any order, samples interleaved
    shuffle = G.shuffle_blocks if path == "numpy" else G._shuffle_blocks_torch
    out = shuffle(x, blocks, gen(21))
    if dtype != x.dtype:  # a pure gather: the same permutations whatever the dtype
        assert torch.equal(shuffle(x.to(dtype), blocks, gen(21)), out.to(dtype))
    src = (out[:, 0] * x.numel()).round().long()  # flat index of the source voxel
    flat = torch.arange(x.numel()).view_as(x)[:, 0]
    owner = torch.full((n, *spatial), -1, dtype=torch.long)
    regions = []
    for j, (s, *box) in enumerate(blocks.tolist()):
        regions.append((s, *[slice(o, o + size) for o, size in zip(box[:len(spatial)], box[len(spatial):])]))
        owner[regions[-1]] = j
    assert torch.equal(src[owner < 0], flat[owner < 0])  # uncovered voxels untouched
    for j, region in enumerate(regions):
        won = owner[region] == j
        got = src[region][won]
        assert len(got.unique()) == len(got) and torch.isin(got, flat[region].reshape(-1)).all()
    torch.testing.assert_close(out[:, 1], out[:, 0] * 2 + 1)  # channels moved together
    assert not torch.equal(out, x)


def test_local_pixel_shuffle_is_local_and_follows_which():
    x = unique_volume(3, 1, (20, 20, 10))
    which = torch.tensor([True, False, True])
    out = G.local_pixel_shuffle(x, gen(7), n_blocks=200, max_frac=0.2, which=which)
    assert torch.equal(out[1], x[1])
    assert (out[0] != x[0]).float().mean() > 0.2 and (out[2] != x[2]).any()
    # each voxel's new value comes from the same sample, less than one block side away
    src = (out * x.numel()).round().long()
    dst = torch.arange(x.numel()).view_as(x)
    for a, stride, hi in [(2, 200, 4), (3, 10, 4), (4, 1, 2)]:
        delta = (src // stride) % x.shape[a] - (dst // stride) % x.shape[a]
        assert delta.abs().max() < hi
    assert torch.equal(src // 4000, dst // 4000)


# ----------------------------------------------------------------------------- painting


def test_inpaint_explicit_boxes():
    x = torch.full((2, 2, 12, 12, 6), 2.0)  # outside [0, 1]: every painted voxel is visible
    boxes = torch.tensor([[0, 1, 2, 0, 3, 4, 2], [0, 6, 6, 3, 4, 4, 3]])
    out = G.paint_boxes(x, boxes, "inpaint", gen(8))
    mask = torch.zeros(2, 12, 12, 6, dtype=torch.bool)
    mask[0, 1:4, 2:6, 0:2] = True
    mask[0, 6:10, 6:10, 3:6] = True
    mask = mask[:, None].expand_as(x)
    assert torch.equal(out != x, mask)
    assert out[mask].min() >= 0 and out[mask].max() < 1
    torch.testing.assert_close(boxes_to_mask(boxes, tuple(x.shape)), mask[:, 0])


def test_outpaint_explicit_boxes():
    x = torch.full((3, 1, 12, 12, 6), 2.0)
    boxes = torch.tensor([[0, 2, 2, 1, 6, 5, 4], [2, 0, 0, 0, 3, 3, 3], [2, 8, 8, 2, 4, 4, 4]])
    out = G.paint_boxes(x, boxes, "outpaint", gen(9))
    keep = boxes_to_mask(boxes, tuple(x.shape))[:, None]
    keep[1] = True  # sample 1 has no box: left unchanged
    assert torch.equal(out == x, keep)
    assert out[~keep].min() >= 0 and out[~keep].max() < 1


@pytest.mark.parametrize("mode", ["inpaint", "outpaint"])
def test_random_painting_matches_its_boxes(mode):
    x = torch.full((40, 1, 28, 28, 14), 2.0)
    out = (G.inpaint if mode == "inpaint" else G.outpaint)(x, gen(10))
    boxes = G.draw_paint_boxes(x, mode, gen(10))  # the same draws, replayed
    mask = boxes_to_mask(boxes, tuple(x.shape))[:, None]
    assert torch.equal(out != x, mask if mode == "inpaint" else ~mask)
    counts = torch.bincount(boxes[:, 0], minlength=40)
    size, org = boxes[:, 4:], boxes[:, 1:4]
    dims = torch.tensor([28, 28, 14])
    if mode == "inpaint":
        assert counts.max() <= 5 and (size >= dims // 6).all() and (size <= dims // 3).all()
    else:
        assert counts.min() >= 1 and counts.max() <= 5
        assert (size >= dims - 4 * dims // 7).all() and (size <= dims - 3 * dims // 7).all()
    assert (org >= 3).all() and (org + size <= dims - 3).all()


# ----------------------------------------------------------------------------- pipeline


def test_plan_frequencies_match_probabilities():
    n = 2000
    c = GenesisCorruption()
    plan = c.plan(n, 3, gen(11))
    p_flips = [0.6, 0.4 * 0.6, 0.4 ** 2 * 0.6, 0.4 ** 3]
    for k, p in enumerate(p_flips):
        assert abs((plan["n_flips"] == k).float().mean().item() - p) < three_sigma(p, n)
    for key, p in [("shuffle", 0.5), ("nonlinear", 0.9), ("inpaint", 0.9 * 0.2), ("outpaint", 0.9 * 0.8)]:
        assert abs(plan[key].float().mean().item() - p) < three_sigma(p, n), key
    assert not (plan["inpaint"] & plan["outpaint"]).any()
    one = plan["n_flips"] == 1  # a single flip picks each axis with probability 1/3
    for a in range(3):
        frac = plan["flip_axes"][one, a].float().mean().item()
        assert abs(frac - 1 / 3) < three_sigma(1 / 3, int(one.sum()))
    assert not plan["flip_axes"][plan["n_flips"] == 0].any()


@pytest.mark.parametrize("step", ["flip", "shuffle", "nonlinear", "inpaint", "outpaint"])
def test_each_step_applied_exactly_when_planned(step):
    probs = dict(flip_prob=0.0, shuffle_prob=0.0, nonlinear_prob=0.0, paint_prob=0.0, inpaint_rate=0.0)
    probs.update({"flip": dict(flip_prob=0.4), "shuffle": dict(shuffle_prob=0.5),
                  "nonlinear": dict(nonlinear_prob=0.9), "inpaint": dict(paint_prob=0.9, inpaint_rate=1.0),
                  "outpaint": dict(paint_prob=0.9)}[step])
    c = GenesisCorruption(**probs, shuffle_blocks=30, shuffle_max_frac=0.5)
    n = 2000
    x = unique_volume(n, 1, (4, 4, 4)).float()
    plan = c.plan(n, 3, gen(12))
    out, target = c.apply(x, plan, gen(13))
    changed = (out != target).flatten(1).any(dim=1)
    if step == "flip":
        assert torch.equal(out, target)
        assert torch.equal((target != x).flatten(1).any(dim=1), plan["flip_axes"].any(dim=1))
        return
    assert torch.equal(target, x)
    planned = plan[step] if step in ("shuffle", "nonlinear", "inpaint", "outpaint") else None
    if step == "inpaint":  # up to 5 boxes, the first with probability 0.95
        assert not changed[~planned].any()
        assert abs(changed[planned].float().mean().item() - 0.95) < three_sigma(0.95, int(planned.sum()))
    else:
        assert torch.equal(changed, planned)
    p = {"shuffle": 0.5, "nonlinear": 0.9, "inpaint": 0.9, "outpaint": 0.9}[step]
    assert abs(planned.float().mean().item() - p) < three_sigma(p, n)


@pytest.mark.parametrize("spatial", [(32, 32, 16), (32, 24)])
def test_pipeline_shapes_range_target_and_seed(spatial):
    c = GenesisCorruption(shuffle_blocks=500)
    x = torch.rand(4, 1, *spatial, generator=gen(14))
    inp, target = c(x, gen(15))
    assert inp.shape == target.shape == x.shape and inp.dtype == x.dtype
    assert inp.min() >= 0 and inp.max() <= 1
    inp2, target2 = c(x, gen(15))
    assert torch.equal(inp, inp2) and torch.equal(target, target2)
    plan = c.plan(4, len(spatial), gen(16))
    plan["flip_axes"] = torch.tensor([[True] + [False] * (len(spatial) - 1), [False] * len(spatial),
                                      [True] * len(spatial), [False, True] + [False] * (len(spatial) - 2)])
    inp, target = c.apply(x, plan, gen(17))
    expected = [x[0].flip(1), x[1], x[2].flip(list(range(1, 1 + len(spatial)))), x[3].flip(2)]
    assert torch.equal(target, torch.stack(expected))  # target = original with the same flips


def test_pipeline_validates_inputs():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        GenesisCorruption()(torch.full((1, 1, 8, 8, 8), 1.5))
    with pytest.raises(ValueError, match="shuffle_prob"):
        GenesisCorruption(shuffle_prob=1.2)
    with pytest.raises(ValueError, match="shuffle_max_frac"):
        GenesisCorruption(shuffle_max_frac=0.0)
    with pytest.raises(ValueError, match="float tensor"):
        GenesisCorruption()(torch.zeros(1, 8, 8, dtype=torch.float32))
    with pytest.raises(ValueError, match="which"):
        G.inpaint(torch.rand(2, 1, 8, 8, 8), gen(), which=torch.tensor([1, 0]))


def test_local_pixel_shuffle_large_batch_in_chunks():
    x = unique_volume(70, 1, (4, 4, 4))  # more samples than one packed-key call takes
    which = torch.arange(70) % 3 > 0
    out = G.local_pixel_shuffle(x, gen(18), n_blocks=5, max_frac=0.5, which=which)
    assert torch.equal(out[~which], x[~which])
    assert (out != x).flatten(1).any(dim=1)[which].float().mean() > 0.9
    assert torch.equal((out * x.numel()).round().long() // 64, torch.arange(70).view(70, 1, 1, 1, 1).expand_as(x))
    with pytest.raises(ValueError, match="which"):
        G.local_pixel_shuffle(x, gen(), which=torch.ones(3, dtype=torch.bool))
