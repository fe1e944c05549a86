"""Pre-training compute, side by side in one run, with ratios.

    python benchmarks/model_speed.py [--size base] [--roi 96] [--batch 4] [--repeats 3]
                                     [--genesis-batch 8] [--threads 0] [--skip-mae] [--skip-genesis]

(c) MAE forward + backward at mask ratio 0.75 with the encoder on the visible tokens only, vs the same
    ViT on all tokens (masked tokens replaced by a mask token inside the encoder, SimMIM-style; same
    decoder and loss). Also the encoder alone on visible vs all tokens. Default: ViT-B, 3D, 96^3,
    patch 16 (216 tokens, 54 visible), decoder 384 x 8 blocks.
(e) Models Genesis corruption throughput on 64 x 64 x 32 sub-volumes: rayssl's vectorised
    ``GenesisCorruption`` on a batch vs a straightforward per-sample / per-block Python loop port of
    the paper's numpy code (written here only), same probabilities and block counts; also local
    pixel shuffling alone (probability 1).

Every measurement is the best of ``--repeats`` interleaved runs after one warm-up (the machine may
be shared; interleaving exposes every variant to the same load).
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch


def best_times(fns, repeats: int) -> list[float]:
    """Best wall time of each function; runs are interleaved so load changes hit all alike."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


# ----------------------------------------------------------------------------- (c) MAE


def all_tokens_step(mae, enc_mask_token, x, mask_ratio):
    """Baseline: the encoder runs on every token (masked ones replaced), then the same decoder/loss."""
    enc = mae.encoder
    t = enc.patch_embed(enc.patch_pixels(x)) + enc.pos_embed[:, 1:]  # [N, L, D]
    _, mask, _ = enc.random_masking(t, mask_ratio)
    t = torch.where(mask[..., None].bool(), enc_mask_token.to(t.dtype), t)
    t = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(len(t), -1, -1), t], dim=1)
    for blk in enc.blocks:
        t = blk(t)
    t = mae.decoder_embed(enc.norm(t)) + mae.decoder_pos_embed
    for blk in mae.decoder_blocks:
        t = blk(t)
    pred = mae.decoder_pred(mae.decoder_norm(t))[:, 1:]
    return mae.forward_loss(x, pred, mask)


def bench_mae(args) -> None:
    from rayssl.models import VIT_SIZES, MaskedAutoencoder

    roi = (args.roi,) * 3
    mae = MaskedAutoencoder(spatial_dims=3, img_size=roi, patch_size=16, in_channels=1, **VIT_SIZES[args.size],
                            decoder_embed_dim=384, decoder_depth=8, decoder_num_heads=12)
    enc_mask_token = torch.nn.Parameter(torch.zeros(1, 1, mae.encoder.embed_dim))
    x = torch.rand(args.batch, 1, *roi)
    r = 0.75
    L = mae.encoder.num_patches
    print(f"(c) MAE pre-training step, ViT-{args.size} ({VIT_SIZES[args.size]}), 3D {roi}, patch 16: "
          f"{L} tokens, {int(L * (1 - r))} visible at mask {r}; batch {args.batch}; decoder 384 x 8")

    def step(loss_fn):
        def run():
            mae.zero_grad(set_to_none=True)
            loss_fn().backward()
        return run

    def enc_step(ratio):
        return step(lambda: mae.encoder(x, mask_ratio=ratio)["tokens"].float().pow(2).mean())

    t_enc_vis, t_enc_all, t_mae, t_all = best_times(
        [enc_step(r), enc_step(0.0), step(lambda: mae(x, mask_ratio=r)[0]),
         step(lambda: all_tokens_step(mae, enc_mask_token, x, r))], args.repeats)
    print(f"    encoder only, fwd+bwd: visible tokens {t_enc_vis:.3f} s | all tokens {t_enc_all:.3f} s "
          f"| ratio {t_enc_all / t_enc_vis:.2f}x")
    print(f"    full step (encoder + decoder + loss), fwd+bwd: MAE {t_mae:.3f} s | encoder on all tokens "
          f"{t_all:.3f} s | ratio {t_all / t_mae:.2f}x (target >= 2.5x)")


# ----------------------------------------------------------------------------- (e) Genesis, loop baseline


def _bernstein(i, n, t):
    from math import comb

    return comb(n, i) * t ** (n - i) * (1 - t) ** i


def _bezier(points, n_times=1000):
    t = np.linspace(0.0, 1.0, n_times)
    poly = np.array([_bernstein(i, len(points) - 1, t) for i in range(len(points))])
    return np.dot([p[0] for p in points], poly), np.dot([p[1] for p in points], poly)


def loop_shuffle(x, n_blocks=10000):
    out, orig = x.copy(), x
    _, rows, cols, deps = x.shape
    for _ in range(n_blocks):
        bx, by, bz = random.randint(1, rows // 10), random.randint(1, cols // 10), random.randint(1, deps // 10)
        ox, oy, oz = random.randint(0, rows - bx), random.randint(0, cols - by), random.randint(0, deps - bz)
        window = orig[:, ox:ox + bx, oy:oy + by, oz:oz + bz].reshape(x.shape[0], -1).copy()
        window = window[:, np.random.permutation(window.shape[1])]
        out[:, ox:ox + bx, oy:oy + by, oz:oz + bz] = window.reshape(x.shape[0], bx, by, bz)
    return out


def loop_nonlinear(x):
    points = [[0, 0], [random.random(), random.random()], [random.random(), random.random()], [1, 1]]
    xs, ys = _bezier(points)
    if random.random() < 0.5:
        xs = np.sort(xs)
    else:
        xs, ys = np.sort(xs), np.sort(ys)
    return np.interp(x, xs, ys).astype(x.dtype)


def loop_inpaint(x):
    x = x.copy()
    _, rows, cols, deps = x.shape
    cnt = 5
    while cnt > 0 and random.random() < 0.95:
        bx, by, bz = random.randint(rows // 6, rows // 3), random.randint(cols // 6, cols // 3), random.randint(deps // 6, deps // 3)
        ox, oy, oz = random.randint(3, rows - bx - 3), random.randint(3, cols - by - 3), random.randint(3, deps - bz - 3)
        x[:, ox:ox + bx, oy:oy + by, oz:oz + bz] = np.random.rand(bx, by, bz)
        cnt -= 1
    return x


def loop_outpaint(x):
    _, rows, cols, deps = x.shape
    orig = x.copy()
    x = np.random.rand(*x.shape).astype(x.dtype)
    cnt = 5
    while cnt == 5 or (cnt > 0 and random.random() < 0.95):
        bx = rows - random.randint(3 * rows // 7, 4 * rows // 7)
        by = cols - random.randint(3 * cols // 7, 4 * cols // 7)
        bz = deps - random.randint(3 * deps // 7, 4 * deps // 7)
        ox, oy, oz = random.randint(3, rows - bx - 3), random.randint(3, cols - by - 3), random.randint(3, deps - bz - 3)
        x[:, ox:ox + bx, oy:oy + by, oz:oz + bz] = orig[:, ox:ox + bx, oy:oy + by, oz:oz + bz]
        cnt -= 1
    return x


def loop_pipeline(batch: np.ndarray, plan: dict) -> list:
    """The paper's per-sample pipeline, following the same per-sample decisions as rayssl's run."""
    out = []
    for i, vol in enumerate(batch):  # vol: [C, H, W, D]
        axes = [1 + a for a in range(3) if plan["flip_axes"][i, a]]
        x = y = np.flip(vol, axis=axes) if axes else vol
        if plan["shuffle"][i]:
            x = loop_shuffle(np.ascontiguousarray(x))
        if plan["nonlinear"][i]:
            x = loop_nonlinear(x)
        if plan["inpaint"][i]:
            x = loop_inpaint(x)
        elif plan["outpaint"][i]:
            x = loop_outpaint(x)
        out.append((x, y))
    return out


def bench_genesis(args) -> None:
    from rayssl.pretrain.genesis_corruptions import GenesisCorruption, local_pixel_shuffle

    n = args.genesis_batch
    x = torch.rand(n, 1, 64, 64, 32)
    xn = x.numpy()
    g = torch.Generator().manual_seed(0)
    corrupt = GenesisCorruption()
    print(f"(e) Models Genesis corruptions, {n} sub-volumes of 64 x 64 x 32, 10,000 shuffle blocks, "
          f"paper probabilities; torch threads {torch.get_num_threads()}, loop single-threaded numpy")
    plan = corrupt.plan(n, 3, g)  # both implementations make the same per-sample decisions
    only_shuffle = {k: torch.zeros_like(v) for k, v in plan.items()}
    only_shuffle["shuffle"] = torch.ones(n, dtype=torch.bool)
    t_vec, t_loop, t_vec_s, t_loop_s = best_times(
        [lambda: corrupt.apply(x, plan, g), lambda: loop_pipeline(xn, plan),
         lambda: local_pixel_shuffle(x, g), lambda: loop_pipeline(xn, only_shuffle)], args.repeats)
    print(f"    per-sample decisions: {int(plan['shuffle'].sum())}/{n} shuffled, {int(plan['nonlinear'].sum())} "
          f"non-linear, {int(plan['inpaint'].sum())} in-painted, {int(plan['outpaint'].sum())} out-painted")
    print(f"    full pipeline: vectorised {n / t_vec:.1f} vol/s | loop {n / t_loop:.1f} vol/s "
          f"| ratio {t_loop / t_vec:.2f}x (target >= 10x)")
    print(f"    local pixel shuffling only (p=1): vectorised {n / t_vec_s:.1f} vol/s | loop "
          f"{n / t_loop_s:.1f} vol/s | ratio {t_loop_s / t_vec_s:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="base", choices=["tiny", "small", "base", "large"])
    p.add_argument("--roi", type=int, default=96)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--genesis-batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--skip-mae", action="store_true")
    p.add_argument("--skip-genesis", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    if not args.skip_mae:
        bench_mae(args)
    if not args.skip_genesis:
        bench_genesis(args)


if __name__ == "__main__":
    main()
