"""Downstream gain of self pre-training on the synthetic CT phantoms with few labelled volumes.

Pre-trains a tiny 3D MAE and a tiny Models Genesis U-Net on the training split only, then fine-tunes
UNETR from the MAE encoder, the Genesis U-Net from its pre-trained weights, and each network from
scratch, all with the same budget, splits and seeds. Prints the test mean Dice of every arm and the
pre-trained minus scratch differences, and writes them to ``<out>/pretrain_gain.json``.

    python benchmarks/pretrain_gain.py [--seeds 2] [--epochs 20] [--pretrain-epochs 20] [--cases 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SPLIT = ["data.folds=4", "data.val_fold=0", "data.test_fold=1"]  # pre-training sees the train split only


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=20, help="fine-tuning epochs per arm")
    p.add_argument("--pretrain-epochs", type=int, default=20, help="MAE pre-training epochs")
    p.add_argument("--genesis-epochs", type=int, default=None, help="Genesis pre-training epochs (default: as MAE)")
    p.add_argument("--cases", type=int, default=8, help="synthetic CT volumes (half of them train)")
    p.add_argument("--roi", type=int, default=48)
    p.add_argument("--out", default="runs/benchmarks/pretrain_gain")
    args = p.parse_args()

    import ray

    from rayssl.cli import init_ray
    from rayssl.config import FinetuneConfig, PretrainConfig, load_config
    from rayssl.finetune.driver import finetune
    from rayssl.train.pretrain import pretrain

    init_ray()
    out = Path(args.out).resolve()
    roi = f"data.roi=[{args.roi},{args.roi},{args.roi}]"
    common = [f"data.source=synthetic:ct:{args.cases}", roi, *SPLIT, f"run.storage_path={out}"]
    t0 = time.perf_counter()

    def pretrained(name: str, overrides: list[str]) -> str:
        run = out / name
        if any((run / "export").glob("*.safetensors")):  # finished earlier with these settings: reuse
            print(f"[pretrain_gain] reusing {run}", flush=True)
            return str(run)
        return pretrain(load_config(PretrainConfig, "pretrain", "tiny", overrides=[*common, f"run.name={name}", *overrides]))

    mae = pretrained("pre-mae", [f"epochs={args.pretrain_epochs}"])
    genesis = pretrained("pre-genesis", [
        f"epochs={args.genesis_epochs or args.pretrain_epochs}", "model.method=genesis", "data.sampling=genesis",
        "model.unet_base_channels=8", "model.unet_norm=instance", "batch_size=4"])
    pretrain_s = time.perf_counter() - t0

    arms = {
        "unetr_mae": ["model.arch=unetr", f"pretrained={mae}"],
        "unetr_scratch": ["model.arch=unetr", "pretrained=none"],
        "unet_genesis": ["model.arch=genesis_unet", f"pretrained={genesis}"],
        "unet_scratch": ["model.arch=genesis_unet", "pretrained=none"],
    }
    unet = ["model.unet_base_channels=8", "model.unet_norm=instance", "model.layer_decay=1.0"]
    rows = []
    for seed in range(args.seeds):
        for arm, overrides in arms.items():
            cfg = load_config(FinetuneConfig, "finetune", "tiny", overrides=[
                *common, *overrides, *(unet if "unet_" in arm else []), f"seed={seed}", f"epochs={args.epochs}",
                f"eval.val_every={max(1, args.epochs // 4)}", f"run.name=ft-{arm}-s{seed}"])
            t = time.perf_counter()
            result = json.loads((Path(finetune(cfg)) / "result.json").read_text())
            rows.append({"arm": arm, "seed": seed, "val_dice": result["val"]["mean_dice"],
                         "test_dice": result["test"]["mean_dice"], "test_hd95": result["test"].get("mean_hd95"),
                         "wall_s": time.perf_counter() - t})
            print(f"[pretrain_gain] {arm} seed {seed}: test Dice {rows[-1]['test_dice']:.4f}", flush=True)

    means = {a: statistics.mean(r["test_dice"] for r in rows if r["arm"] == a) for a in arms}
    diffs = {
        "mae_minus_scratch": means["unetr_mae"] - means["unetr_scratch"],
        "genesis_minus_scratch": means["unet_genesis"] - means["unet_scratch"],
    }
    per_seed = {k: [next(r["test_dice"] for r in rows if r["arm"] == a and r["seed"] == s)
                    - next(r["test_dice"] for r in rows if r["arm"] == b and r["seed"] == s) for s in range(args.seeds)]
                for k, (a, b) in {"mae_minus_scratch": ("unetr_mae", "unetr_scratch"),
                                  "genesis_minus_scratch": ("unet_genesis", "unet_scratch")}.items()}
    print(f"\n{'arm':<16}" + "".join(f"seed{s:<8}" for s in range(args.seeds)) + "mean test Dice")
    for a in arms:
        vals = [r["test_dice"] for r in rows if r["arm"] == a]
        print(f"{a:<16}" + "".join(f"{v:<12.4f}" for v in vals) + f"{means[a]:.4f}")
    for k, v in diffs.items():
        print(f"{k:<24} {v:+.4f}  (per seed: {', '.join(f'{d:+.4f}' for d in per_seed[k])})")
    report = {"args": vars(args), "rows": rows, "mean_test_dice": means, "differences": diffs,
              "per_seed_differences": per_seed, "pretrain_wall_s": pretrain_s}
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain_gain.json").write_text(json.dumps(report, indent=1))
    print(out / "pretrain_gain.json")
    ray.shutdown()


if __name__ == "__main__":
    main()
