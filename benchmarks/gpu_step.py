"""GPU step throughput and MFU of rayssl's models, portable to a bare CUDA machine.

    python benchmarks/gpu_step.py [--peak-tflops 989] [--steps 20] [--warmup 5] [--only CASE,...]
                                  [--batches 8,32,128] [--sw-batches 4,16,32] [--precisions fp32,bf16-autocast,bf16]
                                  [--no-compile | --compile-only] [--deepspeed]
                                  [--e2e [--e2e-batch 64 --e2e-steps 60]] [--tiny] [--out gpu_step.json]

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
* ``cnn_mae``: masked image modelling of nnssl's ResEnc-L at 160^3 (75% of 16^3 blocks masked, MSE on them),
  forward + backward + AdamW step, batch 2 (``--batches`` sweeps it too).

Precisions: ``fp32``; ``bf16-autocast`` (fp32 weights, every weight cast each step); ``bf16`` (bf16 weights, as
DeepSpeed's bf16 mode holds them; no per-step casts). ``--batches`` sweeps the 3D MAE's and UNETR's batch,
``--sw-batches`` the sliding window's ``sw_batch_size``. Compiled rows use ``torch.compile(fullgraph=True)`` as
``scale.compile`` does. Each row says what bounds it: on CUDA the profiler's kernel time per step against the
step's wall time (``launch-bound`` when kernels fill less than half of it, else ``GPU-bound``).

``--deepspeed`` adds rows through rayssl's own training step (needs DeepSpeed and pydantic): the engine built
by ``deepspeed.initialize`` from rayssl's DeepSpeed config, parameter groups and optimiser, bf16 on GPU (fp32 on
CPU), ZeRO 0 and 2, eager and compiled, the step of ``rayssl/pretrain/loop.py`` (objective, ``engine.backward``,
``engine.step``). ``--e2e`` runs ``jobs/pretrain.py --preset mae3d_btcv`` on synthetic CT on one GPU and reports
the time to its first loss line and its samples/s from the loss lines (needs the whole stack: Ray too).

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
    # nnssl's ResEnc-L at its 160^3 patch, 75% of 16^3 blocks masked (the cnn_mae_resenc_ct preset's step)
    "cnn_mae": (dict(roi=(160, 160, 160), size="large", block=16, batch=2), dict(roi=(32, 32, 32), size="tiny", block=16, batch=2)),
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


def gpu_busy_s(fn, device: torch.device, steps: int = 3) -> float | None:
    """Seconds of GPU kernels per call of ``fn`` (the profiler's device time); ``None`` without CUDA."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize(device)
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    return sum(e.device_time for e in kernels) / 1e6 / steps


def bound(busy: float | None, wall: float) -> str:
    """What bounds a step: ``launch-bound`` when its kernels fill under half its wall time, else ``GPU-bound``."""
    if busy is None:
        return "-"
    return f"{'launch-bound' if busy < 0.5 * wall else 'GPU-bound'} (kernels {100 * busy / wall:.0f}%)"


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
    if case == "cnn_mae":
        from rayssl.models.resenc_unet import RESENC_SIZES, ResEncUNet
        from rayssl.pretrain.cnn_mae import block_mask, masked_mse

        model = ResEncUNet(1, 1, **RESENC_SIZES[s["size"]]).to(device)
        gen = torch.Generator(device=device).manual_seed(0)

        def batch():
            x = torch.rand(s["batch"], 1, *s["roi"], device=device)
            return x, block_mask(s["batch"], s["roi"], s["block"], 0.75, gen, device)

        return model, batch, lambda m, b: masked_mse(m(b[0] * (1 - b[1])), b[0], b[1])
    raise ValueError(case)


def _cast(batch, dtype):
    if torch.is_tensor(batch):
        return batch.to(dtype)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in batch)  # labels stay integers


def train_case(case: str, s: dict, device, precision: str, compile_: bool, steps: int, warmup: int, peak: float) -> dict:
    """Forward + backward + fused AdamW step of a case, standalone: ``precision`` fp32, bf16-autocast or bf16."""
    model, make_batch, loss_of = build(case, s, device)
    weights = torch.bfloat16 if precision == "bf16" else torch.float32
    model.to(weights)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    fwd = torch.compile(model, fullgraph=True) if compile_ else model
    batch = _cast(make_batch(), weights)
    autocast = precision == "bf16-autocast"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_of(fwd, batch)
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # compile, allocate
    flops = count_flops(lambda: loss_of(model, batch).float().backward())
    opt.zero_grad(set_to_none=True)
    sec = timed(step, steps, warmup, device)
    n = s["batch"]
    return {"samples_per_s": n / sec, "step_s": sec, "tflop_per_step": flops / 1e12,
            "mfu": flops / sec / (peak * 1e12), "batch": n, "bound": bound(gpu_busy_s(step, device), sec)}


def deepspeed_case(s: dict, device, zero: int, compile_: bool, steps: int, warmup: int, peak: float) -> dict:
    """The 3D MAE through rayssl's training step: rayssl's DeepSpeed engine (bf16 on GPU), objective and step."""
    import os

    import torch.distributed as dist

    from rayssl.config import OptimConfig, ScaleConfig
    from rayssl.pretrain.mae import MAEObjective
    from rayssl.train.engine import build_engine, compile_model, deepspeed_config, resolve_precision
    from rayssl.train.optim import make_optimizer, param_groups

    if not dist.is_initialized():  # one process: the process group Ray Train would have made
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"), RANK="0",
                          LOCAL_RANK="0", WORLD_SIZE="1")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    precision = resolve_precision(ScaleConfig(), device.type == "cuda")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model, make_batch, _ = build("mae3d", s, device)
    x = make_batch()
    flops = count_flops(lambda: model(x, mask_ratio=0.75)[0].backward())  # before the engine hooks the gradients
    model.zero_grad(set_to_none=True)
    compile_model(model, "default" if compile_ else "off")
    optim = OptimConfig(grad_clip=3.0)  # the mae3d_btcv preset's clipping
    engine = build_engine(model, param_groups(model, optim.weight_decay), make_optimizer(optim, 1e-4),
                          lambda opt: None, deepspeed_config(s["batch"], optim, zero, precision, model))
    objective = MAEObjective(0.75)
    generator = torch.Generator(device=device).manual_seed(0)

    def step():  # rayssl/pretrain/loop.py's step
        loss = objective.loss(engine, x, generator, dtype)
        engine.backward(loss)
        engine.step()

    step()  # compile, allocate
    sec = timed(step, steps, warmup, device)
    return {"samples_per_s": s["batch"] / sec, "step_s": sec, "tflop_per_step": flops / 1e12,
            "mfu": flops / sec / (peak * 1e12), "batch": s["batch"], "bound": bound(gpu_busy_s(step, device), sec),
            "precision": precision}


def e2e_case(preset: str, batch: int, steps: int, timeout: float) -> dict:
    """``jobs/pretrain.py --preset PRESET`` (mae3d_btcv) on synthetic CT, one GPU: seconds to the first loss line and the
    median samples/s of its loss lines after the first."""
    import re
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(root / "jobs" / "pretrain.py"), "--preset", preset, "data.source=synthetic:ct:16",
               "scale.num_workers=1", f"batch_size={batch}", f"max_steps={steps}", "run.log_every=10",
               "data.patches_per_volume=64", "run.checkpoint_every=100000", "run.preview_every=0",
               f"run.storage_path={tmp}/runs", f"data.synthetic_dir={tmp}/syn"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
        first, rates, lines = None, [], []
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"step (\d+)/\d+ loss \S+ lr \S+ ([\d.]+) samples/s", line)
            if found:
                first = first or time.perf_counter() - t0
                if int(found.group(1)) > 1:
                    rates.append(float(found.group(2)))
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                break
        proc.wait()
    rates.sort()
    return {"first_loss_s": first, "samples_per_s": rates[len(rates) // 2] if rates else None, "batch": batch,
            "returncode": proc.returncode, "tail": "".join(lines[-5:])}


def sliding_case(s: dict, device, precision: str, compile_: bool, steps: int, warmup: int, peak: float) -> dict:
    from monai.inferers import sliding_window_inference

    from rayssl.models.unetr import UNETR

    weights = torch.bfloat16 if precision == "bf16" else torch.float32
    model = UNETR(s["roi"], s["patch"], 1, s["classes"], s["width"], s["depth"], s["heads"]).to(device, weights).eval()
    net = torch.compile(model, fullgraph=True) if compile_ else model
    volume = torch.rand(1, 1, *s["volume"], device=device, dtype=weights)

    @torch.no_grad()
    def infer():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast"):
            return sliding_window_inference(volume, s["roi"], s["sw_batch"], net, overlap=s["overlap"], mode="gaussian")

    sec = timed(infer, max(1, steps // 4), max(1, warmup // 2), device)
    return {"volumes_per_s": 1.0 / sec, "volume_s": sec, "sw_batch": s["sw_batch"],
            "bound": bound(gpu_busy_s(infer, device, 1), sec)}


def genesis_case(s: dict, device, steps: int, warmup: int) -> dict:
    from rayssl.pretrain.genesis_corruptions import GenesisCorruption

    corrupt = GenesisCorruption()
    x = torch.rand(s["batch"], 1, *s["shape"], device=device)
    g = torch.Generator(device=device).manual_seed(0)
    sec = timed(lambda: corrupt(x, g), steps, warmup, device)
    return {"samples_per_s": s["batch"] / sec, "batch_s": sec}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100/H200: 989)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--only", default="", help="comma-separated cases: " + ", ".join(SIZES))
    p.add_argument("--batches", default="", help="batch sweep of mae3d and unetr (default: the case's batch)")
    p.add_argument("--sw-batches", default="", help="sw_batch_size sweep of sliding_window (default: the case's)")
    p.add_argument("--precisions", default="fp32,bf16-autocast,bf16", help="on CUDA: which of fp32, bf16-autocast, bf16")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--compile-only", action="store_true", help="only the torch.compile rows")
    p.add_argument("--deepspeed", action="store_true", help="add the 3D MAE through rayssl's DeepSpeed training step")
    p.add_argument("--e2e", action="store_true", help="run jobs/pretrain.py --preset mae3d_btcv on one GPU")
    p.add_argument("--e2e-preset", default="mae3d_btcv")
    p.add_argument("--e2e-batch", type=int, default=64)
    p.add_argument("--e2e-steps", type=int, default=60)
    p.add_argument("--e2e-timeout", type=float, default=300.0)
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the default without CUDA)")
    p.add_argument("--out", default="gpu_step.json")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    tiny = args.tiny or not cuda
    cases = [c for c in (args.only.split(",") if args.only else SIZES) if c]
    precisions = [v for v in args.precisions.split(",") if v] if cuda else ["fp32"]
    compiles = [False] if args.no_compile or not cuda else [True] if args.compile_only else [False, True]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are real fp32
    info = {"device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu", "torch": torch.__version__,
            "tiny": tiny, "peak_tflops": args.peak_tflops, "attention": attention_kernel(device), "rows": []}
    print(f"device: {info['device']}; torch {torch.__version__}; attention: {info['attention']}; "
          f"peak {args.peak_tflops:g} TFLOP/s{'; TINY sizes, figures mean nothing' if tiny else ''}", flush=True)
    print(f"{'case':<15} {'precision':<13} {'compile':<8} {'batch':>5} {'samples/s':>10} {'vol/s':>8} "
          f"{'TFLOP/step':>11} {'MFU':>7}  bound")

    def emit(row: dict) -> None:
        info["rows"].append(row)
        fmt = lambda k, f: format(row[k], f) if row.get(k) is not None else "-"  # noqa: E731
        print(f"{row['case']:<15} {row.get('precision', '-'):<13} {str(row.get('compile', '-')):<8} "
              f"{fmt('batch', '5d') if 'batch' in row else fmt('sw_batch', '5d'):>5} {fmt('samples_per_s', '10.2f'):>10} "
              f"{fmt('volumes_per_s', '8.3f'):>8} {fmt('tflop_per_step', '11.3f'):>11} "
              f"{(format(100 * row['mfu'], '6.1f') + '%') if 'mfu' in row else '-':>7}  {row.get('bound', '-')}", flush=True)
        if cuda:
            torch.cuda.empty_cache()

    for case in cases:
        s = SIZES[case][1 if tiny else 0]
        if case == "genesis":
            emit({**genesis_case(s, device, args.steps, args.warmup), "case": case, "size": s})
            continue
        sweep = {"mae3d": _ints(args.batches), "unetr": _ints(args.batches), "cnn_mae": _ints(args.batches),
                 "sliding_window": _ints(args.sw_batches)}.get(case) or [None]
        for precision in precisions:
            for compile_ in compiles:
                for n in sweep:
                    size = dict(s, **({"sw_batch": n} if case == "sliding_window" else {"batch": n})) if n else s
                    run = sliding_case if case == "sliding_window" else lambda *a: train_case(case, *a)
                    row = run(size, device, precision, compile_, args.steps, args.warmup, args.peak_tflops)
                    emit({**row, "case": case, "precision": precision, "compile": compile_, "size": size})
    if args.deepspeed:
        s = SIZES["mae3d"][1 if tiny else 0]
        for zero in (0, 2):
            for compile_ in compiles:
                for n in _ints(args.batches) or [s["batch"]]:
                    row = deepspeed_case(dict(s, batch=n), device, zero, compile_, args.steps, args.warmup, args.peak_tflops)
                    emit({**row, "case": f"mae3d_ds_zero{zero}", "compile": compile_, "size": dict(s, batch=n)})
    if args.e2e:
        row = e2e_case(args.e2e_preset, args.e2e_batch, args.e2e_steps, args.e2e_timeout)
        print(f"e2e jobs/pretrain.py {args.e2e_preset} batch {row['batch']}: first loss line at {row['first_loss_s']} s, "
              f"{row['samples_per_s']} samples/s (median of its loss lines); exit {row['returncode']}", flush=True)
        info["rows"].append({**row, "case": "e2e_pretrain"})
    Path(args.out).write_text(json.dumps(info, indent=1, default=str))
    print(args.out)
    return info


if __name__ == "__main__":
    main()
