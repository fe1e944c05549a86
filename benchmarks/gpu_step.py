"""GPU step throughput and MFU of rayssl's models, portable to a bare CUDA machine.

    python benchmarks/gpu_step.py [--peak-tflops 989] [--steps 20] [--warmup 5] [--only CASE,...]
                                  [--no-compile] [--tiny] [--out gpu_step.json]

Needs only torch, timm, monai, numpy and rayssl's model code (``rayssl/models``, ``rayssl/pretrain/genesis.py``):
no Ray, no DeepSpeed, so it runs where only those can be installed (``PYTHONPATH=. python benchmarks/gpu_step.py``
from a checkout). For each of fp32 and bf16 autocast, with and without ``torch.compile``:

* ``mae3d``: 3D MAE, ViT-B/16 at 96^3, mask 0.75, the paper's 384 x 8 decoder; forward + backward + AdamW
  step, samples/s and MFU (model FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` on one
  step; MFU = FLOPs/s / ``--peak-tflops``, H100/H200 dense bf16 989 TFLOP/s by default).
* ``mae2d``: the 2D MAE, ViT-B/16 at 224 (the MAE paper's setting, decoder 512 x 8), same figures.
* ``unetr``: UNETR ViT-B/16 fine-tuning step at 96^3, batch 2 (DiceCE), samples/s and MFU.
* ``sliding_window``: UNETR sliding-window inference (96^3 windows, overlap 0.5) over a 512 x 512 x 200
  volume, volumes/s.
* ``genesis``: Models Genesis corruptions of 64 x 64 x 32 sub-volumes on the device, samples/s.

On a machine without CUDA it runs the same cases at a tiny size (``--tiny``), in fp32, so that a test keeps
it working; those figures mean nothing. It prints one table, says which attention kernel the ViT blocks
use, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rayssl's model code from this checkout

SIZES = {  # case -> full size, tiny (CPU smoke) size
    "mae3d": (dict(roi=(96, 96, 96), patch=16, width=768, depth=12, heads=12, dec=384, dec_depth=8, dec_heads=12, batch=8),
              dict(roi=(32, 32, 32), patch=16, width=48, depth=2, heads=3, dec=48, dec_depth=1, dec_heads=3, batch=2)),
    "mae2d": (dict(roi=(224, 224), patch=16, width=768, depth=12, heads=12, dec=512, dec_depth=8, dec_heads=16, batch=64),
              dict(roi=(32, 32), patch=16, width=48, depth=2, heads=3, dec=48, dec_depth=1, dec_heads=3, batch=2)),
    "unetr": (dict(roi=(96, 96, 96), patch=16, width=768, depth=12, heads=12, classes=14, batch=2),
              dict(roi=(32, 32, 32), patch=16, width=48, depth=4, heads=3, classes=3, batch=1)),
    "sliding_window": (dict(volume=(512, 512, 200), roi=(96, 96, 96), overlap=0.5, sw_batch=4, patch=16, width=768,
                            depth=12, heads=12, classes=14),
                       dict(volume=(40, 40, 40), roi=(32, 32, 32), overlap=0.25, sw_batch=2, patch=16, width=48,
                            depth=4, heads=3, classes=3)),
    "genesis": (dict(shape=(64, 64, 32), batch=32), dict(shape=(32, 32, 16), batch=2)),
}


def attention_kernel(device: torch.device) -> str:
    """Which attention the timm blocks run: fused SDPA (and, on CUDA, whether the flash kernel accepts bf16)."""
    from timm.layers import use_fused_attn

    if not use_fused_attn():
        return "timm explicit softmax attention (fused SDPA off)"
    if device.type != "cuda":
        return "torch SDPA (CPU kernel)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, 12, 216, 64, device=device, dtype=torch.bfloat16)
    for backend, name in ((SDPBackend.FLASH_ATTENTION, "flash"), (SDPBackend.EFFICIENT_ATTENTION, "memory-efficient"),
                          (SDPBackend.CUDNN_ATTENTION, "cuDNN")):
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            return f"torch SDPA, {name} kernel (bf16)"
        except RuntimeError:
            continue
    return "torch SDPA, math kernel"


def count_flops(fn) -> float:
    """Model FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call: ``warmup`` calls, then the median of ``steps`` timed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def build(case: str, s: dict, device: torch.device):
    """``(module, make_batch, step(module, batch))`` of a case."""
    if case in ("mae3d", "mae2d"):
        from rayssl.models.mae import MaskedAutoencoder

        model = MaskedAutoencoder(len(s["roi"]), s["roi"], s["patch"], 1, s["width"], s["depth"], s["heads"],
                                  s["dec"], s["dec_depth"], s["dec_heads"], norm_pix_loss=True).to(device)
        batch = lambda: torch.rand(s["batch"], 1, *s["roi"], device=device)  # noqa: E731
        return model, batch, lambda m, x: m(x, mask_ratio=0.75)[0]
    if case == "unetr":
        from monai.losses import DiceCELoss

        from rayssl.models.unetr import UNETR

        model = UNETR(s["roi"], s["patch"], 1, s["classes"], s["width"], s["depth"], s["heads"]).to(device)
        loss = DiceCELoss(to_onehot_y=True, softmax=True)

        def batch():
            x = torch.rand(s["batch"], 1, *s["roi"], device=device)
            return x, torch.randint(0, s["classes"], (s["batch"], 1, *s["roi"]), device=device)

        return model, batch, lambda m, b: loss(m(b[0]), b[1])
    raise ValueError(case)


def train_case(case: str, s: dict, device, dtype, compile_: bool, steps: int, warmup: int, peak: float) -> dict:
    model, make_batch, loss_of = build(case, s, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    fwd = torch.compile(model) if compile_ else model
    batch = make_batch()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_of(fwd, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # compile, allocate
    flops = count_flops(lambda: loss_of(model, batch).backward())
    opt.zero_grad(set_to_none=True)
    sec = timed(step, steps, warmup, device)
    n = s["batch"]
    return {"samples_per_s": n / sec, "step_s": sec, "tflop_per_step": flops / 1e12,
            "mfu": flops / sec / (peak * 1e12), "batch": n}


def sliding_case(s: dict, device, dtype, compile_: bool, steps: int, warmup: int, peak: float) -> dict:
    from monai.inferers import sliding_window_inference

    from rayssl.models.unetr import UNETR

    model = UNETR(s["roi"], s["patch"], 1, s["classes"], s["width"], s["depth"], s["heads"]).to(device).eval()
    net = torch.compile(model) if compile_ else model
    volume = torch.rand(1, 1, *s["volume"], device=device)

    @torch.no_grad()
    def infer():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return sliding_window_inference(volume, s["roi"], s["sw_batch"], net, overlap=s["overlap"], mode="gaussian")

    sec = timed(infer, max(1, steps // 4), max(1, warmup // 2), device)
    return {"volumes_per_s": 1.0 / sec, "volume_s": sec}


def genesis_case(s: dict, device, steps: int, warmup: int) -> dict:
    from rayssl.pretrain.genesis import GenesisCorruption

    corrupt = GenesisCorruption()
    x = torch.rand(s["batch"], 1, *s["shape"], device=device)
    g = torch.Generator(device=device).manual_seed(0)
    sec = timed(lambda: corrupt(x, g), steps, warmup, device)
    return {"samples_per_s": s["batch"] / sec, "batch_s": sec}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--only", default="", help="comma-separated cases: " + ", ".join(SIZES))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the default without CUDA)")
    p.add_argument("--out", default="gpu_step.json")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    tiny = args.tiny or not cuda
    cases = [c for c in (args.only.split(",") if args.only else SIZES) if c]
    dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    compiles = [False] if args.no_compile or not cuda else [False, True]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are real fp32
    info = {"device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu", "torch": torch.__version__,
            "tiny": tiny, "peak_tflops": args.peak_tflops, "attention": attention_kernel(device), "rows": []}
    print(f"device: {info['device']}; torch {torch.__version__}; attention: {info['attention']}; "
          f"peak {args.peak_tflops:g} TFLOP/s{'; TINY sizes, figures mean nothing' if tiny else ''}", flush=True)
    print(f"{'case':<15} {'dtype':<9} {'compile':<8} {'samples/s':>10} {'vol/s':>8} {'TFLOP/step':>11} {'MFU':>7}")
    for case in cases:
        s = SIZES[case][1 if tiny else 0]
        for dtype in dtypes:
            for compile_ in compiles if case != "genesis" else [False]:
                if case == "genesis":
                    row = genesis_case(s, device, args.steps, args.warmup)
                elif case == "sliding_window":
                    row = sliding_case(s, device, dtype, compile_, args.steps, args.warmup, args.peak_tflops)
                else:
                    row = train_case(case, s, device, dtype, compile_, args.steps, args.warmup, args.peak_tflops)
                row.update(case=case, dtype=str(dtype).removeprefix("torch."), compile=compile_, size=s)
                info["rows"].append(row)
                fmt = lambda k, f: format(row[k], f) if k in row else "-"  # noqa: E731
                print(f"{case:<15} {row['dtype']:<9} {str(compile_):<8} {fmt('samples_per_s', '10.2f'):>10} "
                      f"{fmt('volumes_per_s', '8.3f'):>8} {fmt('tflop_per_step', '11.3f'):>11} "
                      f"{(format(100 * row['mfu'], '6.1f') + '%') if 'mfu' in row else '-':>7}", flush=True)
                if cuda:
                    torch.cuda.empty_cache()
    Path(args.out).write_text(json.dumps(info, indent=1, default=str))
    print(args.out)
    return info


if __name__ == "__main__":
    main()
