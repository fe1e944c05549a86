"""Can a GPU node's CPUs feed one GPU pre-training the 3D MAE? Crops a GPU needs per second, against what one
core cuts.

    python benchmarks/feed_rate.py [--peak-tflops 989] [--mfu 0.4] [--roi 96] [--repeats 5]

* Need: the model FLOPs of one 3D MAE ViT-B/16 sample (forward + backward, mask 0.75, the 384 x 8 decoder;
  counted with ``torch.utils.flop_counter.FlopCounterMode`` on this machine's CPU, as ``gpu_step.py`` does)
  turned into samples/s per GPU at ``--mfu`` of ``--peak-tflops`` (default: H100/H200 dense bf16, 40%).
* Supply: what one core of a training worker delivers from kept volumes: ``epoch_batches`` (new crops,
  flips, batching; :mod:`rayssl.data.crops`) over preprocessed volumes in memory, one torch thread,
  the median over ``--repeats`` epochs; and on CUDA, the same crops cut on the GPU from volumes sent to it
  once (``DeviceCrops``, the path a GPU worker takes with kept volumes), crops/s per GPU.

Prints both, their ratio (cores per GPU) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def flops_per_sample(roi: int) -> float:
    from benchmarks.gpu_step import SIZES, build, count_flops

    size = {**SIZES["mae3d"][0], "roi": (roi,) * 3, "batch": 1}
    model, batch, loss_of = build("mae3d", size, torch.device("cpu"))
    x = batch()
    return count_flops(lambda: loss_of(model, x).backward())


def crops_per_core(roi: int, repeats: int, device: torch.device | None = None) -> float:
    """Crops/s of ``epoch_batches`` from kept volumes: cut on the CPU, or with ``device`` cut on it."""
    from rayssl.config import DataConfig
    from rayssl.data.crops import DeviceCrops, epoch_batches

    rng = np.random.default_rng(0)
    side = 2 * roi + 8  # volumes a few crops wide, as preprocessed abdominal CT at 1.5 mm
    volumes = [{"case_id": f"case{i}", "image": rng.random((1, side, side, roi + 24), dtype=np.float32)}
               for i in range(6)]
    data = DataConfig(roi=(roi,) * 3, patches_per_volume=8, sampling="random", flip_prob=0.2)
    on = DeviceCrops(device, data) if device is not None else None
    rates = []
    for epoch in range(repeats + (on is not None)):  # on a device: the first epoch sends the volumes, untimed
        t0, n = time.perf_counter(), 0
        for batch in epoch_batches(iter(volumes), data, epoch, 8, ["image"], on_device=on):
            n += batch["image"].shape[0]
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates[1:] if on is not None else rates)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense peak (H100/H200 bf16: 989)")
    p.add_argument("--mfu", type=float, default=0.4, help="the model FLOPs utilisation to feed")
    p.add_argument("--roi", type=int, default=96, help="cubic crop side")
    p.add_argument("--repeats", type=int, default=5, help="epochs of crops timed (median)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    flops = flops_per_sample(args.roi)
    need = args.mfu * args.peak_tflops * 1e12 / flops
    supply = crops_per_core(args.roi, args.repeats)
    mb = args.roi**3 * 4 / 2**20
    print(f"3D MAE ViT-B/16 at {args.roi}^3: {flops / 1e9:.1f} GFLOP a sample (forward + backward)")
    print(f"one GPU at {args.mfu:.0%} of {args.peak_tflops:g} TFLOP/s needs {need:,.0f} crops/s ({need * mb / 1024:.1f} GB/s fp32)")
    print(f"one core cuts {supply:,.0f} crops/s ({supply * mb / 1024:.2f} GB/s) from kept volumes")
    print(f"cores per GPU needed: {need / supply:.1f}")
    out = {"gflop_per_sample": flops / 1e9, "crops_per_s_needed_per_gpu": need, "crops_per_s_per_core": supply,
           "cores_per_gpu": need / supply, "roi": args.roi, "mfu": args.mfu, "peak_tflops": args.peak_tflops}
    if torch.cuda.is_available():
        gpu = crops_per_core(args.roi, args.repeats, torch.device("cuda"))
        print(f"cut on the GPU ({torch.cuda.get_device_name(0)}) from volumes sent once: {gpu:,.0f} crops/s, "
              f"{gpu / need:.2f}x what the step needs")
        out.update(gpu_crops_per_s=gpu, gpu_supply_over_need=gpu / need, gpu=torch.cuda.get_device_name(0))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
