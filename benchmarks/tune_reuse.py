"""Tiny sweep with and without pre-training reuse: total wall time, pre-trainings run, ASHA early stops.

    python benchmarks/tune_reuse.py [--trials 6] [--pretrain-epochs 1] [--finetune-epochs 3] [--out DIR]

Both sweeps use the same seed and only random (startup) TPE trials, so they sample the same
configurations; mask ratios lie on a 0.2 grid (0.6 / 0.8), so with reuse at most two encoders are
pre-trained, without reuse one per trial. Prints a JSON line per sweep, then the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def run(reuse: bool, args) -> dict:
    from rayssl.config import SweepConfig, load_config
    from rayssl.tune.leaderboard import load_sweep
    from rayssl.tune.sweep import run_sweep

    name = "reuse" if reuse else "no_reuse"
    cfg = load_config(SweepConfig, "tune", "tiny", overrides=[
        f"num_samples={args.trials}", f"startup_trials={args.trials}", f"name={name}", f"storage_path={args.out}",
        "baseline=false", f"reuse_pretraining={reuse}", f"pretrain.epochs={args.pretrain_epochs}",
        f"finetune.epochs={args.finetune_epochs}", f"pretrain.data.synthetic_dir={args.out}/synthetic",
        f"finetune.data.synthetic_dir={args.out}/synthetic",
        "space={mask_ratio: {low: 0.6, high: 0.8, step: 0.2}, layer_decay: {low: 0.5, high: 0.95}, "
        "drop_path: {low: 0.0, high: 0.3}, lr: {low: 3.0e-4, high: 1.0e-2, log: true}}"])
    t0 = time.perf_counter()
    sweep_dir = run_sweep(cfg)
    wall = time.perf_counter() - t0
    rows = load_sweep(sweep_dir)["rows"]
    out = {"sweep": name, "trials": len(rows), "wall_s": round(wall, 1),
           "pretrainings": sum(r["pretrain"] == "trained" for r in rows),
           "stopped_early": sum(r["status"] == "stopped" for r in rows),
           "stopped_fraction": round(sum(r["status"] == "stopped" for r in rows) / max(1, len(rows)), 3),
           "best_val": max((r["val_metric"] for r in rows if r["val_metric"] is not None), default=None),
           "sweep_dir": sweep_dir}
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--out", default="/tmp/rayssl-bench-tune")
    args = parser.parse_args()
    if args.trials < 6:
        parser.error("--trials must be >= 6")
    args.out = str(Path(args.out).resolve())
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with_reuse = run(True, args)
    without = run(False, args)
    print(json.dumps({
        "wall_ratio_without_over_with": round(without["wall_s"] / with_reuse["wall_s"], 2),
        "pretrainings_with": with_reuse["pretrainings"], "pretrainings_without": without["pretrainings"],
        "asha_stopped_fraction_with": with_reuse["stopped_fraction"],
        "asha_stopped_fraction_without": without["stopped_fraction"]}))


if __name__ == "__main__":
    main()
