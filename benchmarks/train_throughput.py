"""Training throughput and memory, side by side in one run, with ratios.

    python benchmarks/train_throughput.py [--size small] [--roi 64] [--patch 16] [--batch 4] [--steps 30]
                                          [--skip-throughput] [--skip-zero]

(a) rayssl's Ray Train + DeepSpeed loop on 1 worker vs (b) a plain single-process PyTorch loop: the
    same 3D MAE, batch, optimiser and in-memory data; steady-state samples/s (first window of each run
    dropped), ratio (a)/(b) (target >= 0.95). Both use the same number of torch threads.
ZeRO: peak memory above the process baseline (model, gradients, optimiser state, activations) per
    worker with 2 workers for ZeRO stages 0, 2 and 3 on the ViT-B 3D MAE at 96^3, batch 1 (target:
    stage 3 <= 0.6x stage 0). On CPU the figure is peak RSS minus the RSS before the model is built;
    on GPU it is ``torch.cuda.max_memory_allocated``. On CPU the rows are measured twice: with glibc's
    default malloc, whose adaptive mmap threshold keeps freed tensors in a fragmented heap, and with
    a fixed threshold (``MALLOC_MMAP_THRESHOLD_``), where freed tensors go back to the OS and RSS
    follows the tensors actually alive. Each row also gives samples/s over steps 6-10, the price of
    the fixed threshold.
(c)-(e) (MAE on visible vs all tokens, Genesis corruption vectorised vs a loop): benchmarks/model_speed.py.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np
import ray
import torch

from rayssl.config import PretrainConfig, load_config
from rayssl.pretrain.driver import pretrain
from rayssl.pretrain.methods import build_model
from rayssl.train.optim import effective_lr, param_groups


# decoder width, depth, heads per encoder size: the paper's 384 x 8 for ViT-B, lighter below
DECODERS = {"tiny": (96, 2, 4), "small": (384, 4, 12), "base": (384, 8, 12)}


# malloc settings of the worker processes for the ZeRO rows (see the module docstring)
ALLOCATORS = {"glibc default": {}, "fixed mmap threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def config(tmp: str, name: str, size: str, roi: int, patch: int, batch: int, steps: int, workers: int, zero: int, cpus: float) -> PretrainConfig:
    width, depth, heads = DECODERS[size]
    return load_config(
        PretrainConfig,
        "pretrain",
        preset="tiny",
        overrides=[
            f"data.roi=[{roi},{roi},{roi}]",
            f"model.size={size}",
            f"model.patch_size={patch}",
            f"model.decoder_embed_dim={width}",
            f"model.decoder_depth={depth}",
            f"model.decoder_num_heads={heads}",
            f"batch_size={batch}",
            f"max_steps={steps}",
            "epochs=1000",
            f"scale.num_workers={workers}",
            f"scale.zero_stage={zero}",
            f"scale.cpus_per_worker={cpus}",
            "run.log_every=5",
            f"run.checkpoint_every={10**6}",
            "run.preview_every=0",
            f"run.storage_path={tmp}",
            f"run.name={name}",
        ],
    )


def in_memory_dataset(n: int, roi: int | tuple[int, ...]) -> ray.data.Dataset:
    shape = (roi,) * 3 if isinstance(roi, int) else roi
    # volumes of the ROI's shape: each is one crop per epoch
    rng = np.random.default_rng(0)
    return ray.data.from_items([{"case_id": f"v{i}", "image": rng.random((1, *shape), dtype=np.float32)} for i in range(n)])


def steady_rate(run_dir: str) -> float:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    rows = rows[1:-1] or rows  # drop the warm-up window and the final (checkpointing) one
    return float(np.median([r["samples_per_s"] for r in rows]))


def plain_loop(cfg: PretrainConfig, data: torch.Tensor, threads: int) -> float:
    """The baseline: the same model and optimiser in one process, no Ray, no DeepSpeed."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(cfg, 1).train()
    opt = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=effective_lr(cfg.optim, cfg.batch_size), betas=cfg.optim.betas)
    b = cfg.batch_size
    times = []
    for step in range(cfg.max_steps):
        i = (step * b) % (len(data) - b + 1)
        t = time.perf_counter()
        loss, _, _ = model(data[i : i + b], mask_ratio=cfg.model.mask_ratio)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    steady = times[5:] or times
    return b / float(np.median(steady))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", choices=sorted(DECODERS))
    p.add_argument("--roi", type=int, default=64)
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads for (a) and (b) (cpus per worker)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-zero", action="store_true")
    p.add_argument("--keep", metavar="DIR", help="write the runs to DIR and keep them (default: a temporary "
                   "directory removed at the end; the ZeRO runs' checkpoints take several GB)")
    args = p.parse_args()
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        run_benchmarks(args, os.path.abspath(args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="rayssl-bench-") as tmp:
            run_benchmarks(args, tmp)


def run_benchmarks(args: argparse.Namespace, tmp: str) -> None:
    n = args.batch * (args.steps + 2)

    if not args.skip_throughput:
        ray.init(include_dashboard=False, log_to_driver=False)
        cfg = config(tmp, "a", args.size, args.roi, args.patch, args.batch, args.steps, 1, 0, args.threads)
        ds = in_memory_dataset(n, args.roi)
        data = torch.from_numpy(np.stack([r["image"] for r in ds.take_all()]))
        rate_b = plain_loop(cfg, data, args.threads)
        rate_a = steady_rate(pretrain(cfg, dataset=ds))
        rate_b2 = plain_loop(cfg, data, args.threads)  # again, so machine load drift shows
        baseline = max(rate_b, rate_b2)
        print(f"model: 3D MAE ViT-{args.size}, roi {args.roi}^3, patch {args.patch}, batch {args.batch}, {args.threads} thread(s)")
        print(f"(a) Ray Train + DeepSpeed, 1 worker : {rate_a:8.2f} samples/s")
        print(f"(b) plain PyTorch loop              : {rate_b:8.2f} / {rate_b2:8.2f} samples/s (before / after)")
        print(f"ratio (a)/(b) = {rate_a / baseline:.3f}   (target >= 0.95)")

    if not args.skip_zero:
        for allocator, env in ALLOCATORS.items():
            ray.shutdown()
            ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
            mem = {}
            for stage in (0, 2, 3):
                cfg = config(tmp, f"zero{stage}-{len(env)}", "base", 96, 16, 1, 10, 2, stage, 0.5)  # CPU left to Ray Data
                run_dir = pretrain(cfg, dataset=in_memory_dataset(8, 96))
                last = json.loads((Path(run_dir) / "metrics.jsonl").read_text().splitlines()[-1])
                mem[stage] = last["train_mem_mb_max"]
                print(f"[{allocator}] ZeRO-{stage}: training memory per worker (max of 2) {mem[stage]:8.0f} MB"
                      f"   (peak RSS {last['peak_mem_mb_max']:.0f} MB, {last['samples_per_s']:.2f} samples/s)")
            print(f"[{allocator}] ratio ZeRO-2 / ZeRO-0 = {mem[2] / mem[0]:.3f}")
            print(f"[{allocator}] ratio ZeRO-3 / ZeRO-0 = {mem[3] / mem[0]:.3f}   (target <= 0.6)")
    ray.shutdown()

if __name__ == "__main__":
    main()
