"""Label efficiency of self pre-training: test Dice against the number of labelled training cases.

    python benchmarks/label_efficiency.py --source SPEC [--pretrain-source SPEC] [--recipe NAME]
        [--methods mae,mae@0.75,genesis] [--labelled 1,2,4] [--seeds 3] [--pretrain-epochs N] [--epochs N] [--roi R]
        [--spacing MM] [--layer-decay D] [--pretrained-lr-scale F] [--out DIR]

Protocol:

* Each method pre-trains once, without labels, on all training cases of the source (self pre-training), or
  with ``--pretrain-source`` on a separate unlabelled pool (any source spec; 95% of its cases, the rest its
  validation split; ``synthetic:ct:100:1000`` is 100 phantoms generated with seed 1000, none of the source's)
  for the same number of optimiser steps and warm-up steps (the pool's epochs are longer, so fewer); every
  fine-tuning run of that method starts from it. A pool holding a test case of the
  source (the same file, or a file with the same content) is refused before any run.
* For each k in ``--labelled`` and each seed, fine-tuning sees k labelled training cases (a subset drawn
  with the seed, ``data.train_cases`` / ``data.subset_seed``). The pre-trained arm has a scratch twin with
  the same subset, budget, crops, seed and evaluation.
* Every run is scored on the same held-out test cases (and validated on the same validation cases).
* An epoch is ``CROPS_PER_EPOCH`` crops whatever k is (``data.patches_per_volume`` = CROPS_PER_EPOCH / k),
  so all runs train for the same number of steps (the defaults: 16 epochs of 8 steps of 4 crops, validated
  half-way and at the end; the best of the two is tested).
* Every run is one Ray Train worker that holds all the node's CPUs (the volumes are preprocessed into Ray's
  object store before training starts, so Ray Data needs none while it trains).

MAE arms: the ``tiny`` presets (3D MAE, then UNETR) with ``--recipe`` (default: the source's own); ``mae`` masks
12.5% of the tokens, as SelfMedMAE's run scripts (``scripts/run_mae3d+unetr_btcv.sh --mask_ratio=0.125``),
``mae@R`` a fraction R (``mae@0.75``: its configs' and the MAE paper's ratio). cnn_mae arms: ``tiny_cnn_mae``
(masked image modelling of a tiny residual-encoder U-Net, as nnssl), then the same U-Net fine-tuned whole
(``model.arch=resenc_unet``); its scratch twin is that U-Net from random weights.
Genesis arms: ``tiny_genesis`` then the Genesis U-Net with the Genesis-compatible form of that recipe
(``mri_brats`` -> ``mri_genesis``), so ``--methods mae,genesis --recipe mri_brats`` works on MRI. Fine-tuning on
BraTS-like regions samples a third of its crops on the tumour and the rest anywhere (``REGION_SAMPLING``); other
tasks keep the ``tiny`` preset's class-centred crops.
``--layer-decay`` sets the UNETR arms' layer-wise lr decay (default: the preset's). A diagnostic:
``--methods mae --layer-decay 0.001`` all but freezes the ViT encoder (its last block trains at 1e-3 of the
decoder's lr, the earlier ones at 1e-6 and less), so the pre-trained arm fine-tunes a decoder on the
pre-trained features and the scratch arm the same decoder on random features.
``--pretrained-lr-scale F`` fine-tunes every pre-trained arm at F times its scratch twin's peak lr (default 1: the
same). nnssl's adaptation of its ResEnc checkpoints uses 0.1 (TaWald/nnUNet ``PretrainedTrainer``:
``initial_lr = 1e-3`` with the pre-trained weights, ``1e-2`` without), so that fine-tuning does not wash the
pre-trained weights out.

Every table names the strongest scratch arm at each k (the best mean test Dice among all scratch twins) and
reports each method's gain twice: against its own twin, and against that arm (``strongest_scratch``,
``gain_vs_strongest`` in the JSON summary). A run whose validation metric never moves (the same value at every
validation: a degenerate solution such as one class everywhere) is flagged (``val_flat``) and counted. For the U-Net
methods each run also reports how far its fine-tuned weights lie from the pre-trained ones, relative to their norm
(``weight_drift``; per arm in the summary): a pre-trained arm that drifts as far as its scratch twin's solution lies
has kept nothing of its pre-training.

Writes ``DIR/label_efficiency.json`` (``rows``, ``summary``, ``settings``) and ``DIR/label_efficiency.png``,
prints the summary table; the last printed line is the JSON path. Re-running with the same ``--out`` and
the same settings reuses the runs already finished there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

CROPS_PER_EPOCH = 32
"""Training crops per fine-tuning epoch, whatever the number of labelled cases."""
SPLIT = ["data.folds=4", "data.val_fold=0", "data.test_fold=1"]
"""A quarter of the cases validate, a quarter test, half train (pre-training sees those only)."""
GENESIS_UNET = ["model.unet_base_channels=8", "model.unet_norm=instance"]  # as the tiny_genesis preset
MAE_MASK = 0.125
"""``mae``'s mask ratio: SelfMedMAE's run scripts (``--mask_ratio=0.125``, 12.5% of the tokens masked)."""
POOL_SPLIT = ["data.folds=20", "data.val_fold=0", "data.test_fold=null"]
REGION_SAMPLING = ["data.sampling=balanced", "data.pos_fraction=0.33"]
"""Fine-tuning crops of BraTS-like regions: a third centred on the tumour, the rest anywhere (nnU-Net's
``oversample_foreground_percent = 0.33``, nnunetv2 nnUNetTrainer). The ``tiny`` preset's class-centred crops put 3 of
4 crops on the one tumour its three nested labels make; with a tumour larger than the crop that biases every region
on (docs/pretraining_pays_off.md, "A fine-tuning that collapses"). Other tasks keep the preset's."""
"""A pre-training pool: 95% of its cases pre-train, the rest are its validation split."""


RESENC_UNET = ["model.size=tiny"]  # as the tiny_cnn_mae preset


def mask_of(method: str) -> float | None:
    """The mask ratio of an MAE method (``mae``: :data:`MAE_MASK`, ``mae@R``: R); ``None`` for the others."""
    if method in ("genesis", "cnn_mae"):
        return None
    return float(method.partition("@")[2] or MAE_MASK)


def family(method: str) -> str:
    """``mae`` for every MAE method, else the method."""
    return method if method in ("genesis", "cnn_mae") else "mae"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default="synthetic:ct:12", help="any data source SPEC, e.g. msd:/data/Task09_Spleen")
    p.add_argument("--recipe", default=None, help="preprocessing recipe of the MAE arms (default: the source's)")
    p.add_argument("--pretrain-source", default=None, help="pre-train on this unlabelled pool (any source SPEC) "
                   "instead of the source's training cases")
    p.add_argument("--methods", default="mae,genesis", help="comma-separated: mae (mask 0.125), mae@R (mask R), genesis, "
                   "cnn_mae (masked image modelling of a residual U-Net)")
    p.add_argument("--labelled", default="1,2,4", help="comma-separated numbers of labelled training cases")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pretrain-epochs", type=int, default=80, help="pre-training epochs (12 steps each "
                   "on 6 training cases with the tiny presets)")
    p.add_argument("--epochs", type=int, default=16, help=f"fine-tuning epochs of {CROPS_PER_EPOCH} crops (16: the "
                   "defaults take 49 min on 2 cores, but UNETR learns only 2-4 of 7 organs; 30: about 75 min)")
    p.add_argument("--roi", type=int, default=32, help="cubic crop size for pre-training and fine-tuning")
    p.add_argument("--spacing", type=float, default=3.0, help="isotropic voxel spacing in mm of every arm "
                   "(the tiny presets' 3 mm; 0: the recipe's own)")
    p.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay of the UNETR arms "
                   "(default: the preset's; 0.001 all but freezes the encoder)")
    p.add_argument("--pretrained-lr-scale", type=float, default=1.0, help="the pre-trained arms fine-tune at this "
                   "times the scratch arms' peak lr (nnssl's adaptation: 0.1)")
    p.add_argument("--out", default="runs/benchmarks/label_efficiency")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.labelled = sorted({int(k) for k in args.labelled.split(",") if k.strip()})
    bad = []
    for m in args.methods:
        try:
            ok = m in ("mae", "genesis", "cnn_mae") or (m.startswith("mae@") and 0.0 < mask_of(m) < 1.0)
        except ValueError:
            ok = False
        bad += [] if ok else [m]
    if bad or not args.methods:
        p.error(f"--methods: unknown {bad or 'empty'}; choose from mae, mae@R (0 < R < 1), genesis, cnn_mae")
    if not args.labelled or min(args.labelled) < 1 or args.seeds < 1:
        p.error("--labelled needs positive integers and --seeds >= 1")
    if args.layer_decay is not None and not 0.0 < args.layer_decay <= 1.0:
        p.error(f"--layer-decay {args.layer_decay} must be in (0, 1]")
    if not 0.0 < args.pretrained_lr_scale <= 1.0:
        p.error(f"--pretrained-lr-scale {args.pretrained_lr_scale} must be in (0, 1]")
    return args


def recipes(source: str, recipe: str | None) -> dict[str, str]:
    """The recipe of each method's arms: MAE's (and cnn_mae's) as given (or the source's), Genesis' [0, 1] form of it."""
    from rayssl.config import DataConfig
    from rayssl.config.recipes import genesis_recipe
    from rayssl.data.sources import resolve_source

    mae = recipe or resolve_source(DataConfig(source=source)).recipe
    return {"mae": mae, "genesis": genesis_recipe(mae), "cnn_mae": mae}


def sampling_overrides(recipe: str) -> list[str]:
    """The fine-tuning crops of a task: ``REGION_SAMPLING`` for BraTS-like regions, else the ``tiny`` preset's."""
    from rayssl.finetune.task import BRATS_RECIPES

    return REGION_SAMPLING if recipe in BRATS_RECIPES else []


def model_overrides(method: str, layer_decay: float | None) -> list[str]:
    """The fine-tuned network of a method's arms: UNETR (with ``layer_decay`` if given) or the Genesis U-Net."""
    if family(method) == "genesis":
        return ["model.arch=genesis_unet", *GENESIS_UNET]
    if family(method) == "cnn_mae":
        return ["model.arch=resenc_unet", *RESENC_UNET]
    return ["model.arch=unetr", *([] if layer_decay is None else [f"model.layer_decay={layer_decay}"])]


def arm_overrides(arm: str, lr_scale: float) -> list[str]:
    """The fine-tuning overrides of an arm: the pre-trained one at ``lr_scale`` times the ``tiny`` preset's peak lr."""
    from rayssl.config import FinetuneConfig, load_config

    if arm == "scratch" or lr_scale == 1.0:
        return []
    return [f"optim.lr={load_config(FinetuneConfig, 'finetune', 'tiny').optim.lr * lr_scale:g}"]


def check_labelled(source: str, labelled: list[int]) -> int:
    """The number of training cases, after checking that the largest k fits (before any Ray work)."""
    from rayssl.config import DataConfig, build_config
    from rayssl.data.sources import resolve_source

    data = build_config(DataConfig, {"source": source, "folds": 4, "val_fold": 0, "test_fold": 1})
    src = resolve_source(data)
    n_train = len(src.split("train"))
    if not src.split("test") or not src.split("val"):
        raise SystemExit(f"error: source {source!r} needs cases for validation and test (4 folds)")
    if max(labelled) > n_train:
        raise SystemExit(f"error: --labelled {max(labelled)} but source {source!r} has {n_train} training cases")
    return n_train


def listed(spec: str, split: list[str]):
    """The source ``spec`` listed and split as ``split`` (:data:`SPLIT` or :data:`POOL_SPLIT`) asks."""
    from rayssl.config import DataConfig, build_config, parse_override
    from rayssl.data.sources import resolve_source

    data = {"source": spec}
    for item in split:
        data.update(parse_override(item)["data"])
    return resolve_source(build_config(DataConfig, data))


def pool_cases(pool: str) -> int:
    """The number of cases a pool pre-trains on (its training split)."""
    return len(listed(pool, POOL_SPLIT).split("train"))


def pool_overlap(source: str, pool: str) -> list[str]:
    """The source's test images that are also in the pre-training pool: the same file (links resolved), or a local
    file of the same content (hashed only where the sizes match)."""
    import hashlib
    import os

    def images(spec: str, split: list[str]) -> list:
        return [(c.split, f if "://" in f else os.path.realpath(f)) for c in listed(spec, split).cases for f in c.image]

    def digest(path: str) -> str:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    tests = [f for split, f in images(source, SPLIT) if split == "test"]
    pooled = {f for _, f in images(pool, POOL_SPLIT)}
    sizes = {os.path.getsize(f) for f in tests if "://" not in f}
    pool_hashes = {digest(f) for f in pooled if "://" not in f and os.path.getsize(f) in sizes}
    return [f for f in tests if f in pooled or ("://" not in f and pool_hashes and digest(f) in pool_hashes)]


def summarise(rows: list[dict]) -> list[dict]:
    """Per method and k: the mean test Dice of each arm, the gain of pre-training per seed, and the gain against the
    strongest scratch arm at that k (the best mean test Dice among all methods' scratch twins)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for k in sorted({r["labelled"] for r in rows if r["method"] == method}):
            pick = {(r["arm"], r["seed"]): r["test_dice"] for r in rows if r["method"] == method and r["labelled"] == k}
            seeds = sorted({s for _, s in pick})
            gains = [pick[("pretrained", s)] - pick[("scratch", s)] for s in seeds]
            pre = [pick[("pretrained", s)] for s in seeds]
            scr = [pick[("scratch", s)] for s in seeds]
            out.append({
                "method": method, "labelled": k,
                "pretrained_mean": statistics.mean(pre), "scratch_mean": statistics.mean(scr),
                "gain_mean": statistics.mean(gains), "gain_per_seed": gains,
                "gain_std": statistics.stdev(gains) if len(gains) > 1 else 0.0,
                "flat_runs": sum(bool(r.get("val_flat")) for r in rows if r["method"] == method and r["labelled"] == k),
                "weight_drift": {arm: statistics.mean(d) for arm in ("pretrained", "scratch") if (d := [
                    r["weight_drift"] for r in rows if (r["method"], r["labelled"], r["arm"]) == (method, k, arm)
                    and r.get("weight_drift") is not None])},
            })
    for s in out:
        scratch = {t["method"]: t["scratch_mean"] for t in out if t["labelled"] == s["labelled"]}
        strongest = max(scratch, key=scratch.get)
        s["strongest_scratch"] = {"method": strongest, "test_dice": scratch[strongest]}
        s["gain_vs_strongest"] = s["pretrained_mean"] - scratch[strongest]
    return out


def weight_drift(pretrained: Path, finetuned: Path) -> float | None:
    """How far fine-tuning took a U-Net from the pre-trained weights: ``|W - W_pre| / |W_pre|`` over the weight tensors
    (2 or more dims) that both files hold with the same shape, so the new output layer is left out. About 1.4 for an
    unrelated network of the same norm; ``None`` without shared tensors (an MAE encoder against UNETR)."""
    from safetensors.torch import load_file

    pre, ft = load_file(pretrained), load_file(finetuned)
    keys = [k for k, v in pre.items() if v.ndim > 1 and k in ft and ft[k].shape == v.shape]
    if not keys:
        return None
    diff = sum(float((ft[k].double() - pre[k].double()).square().sum()) for k in keys)
    return (diff / sum(float(pre[k].double().square().sum()) for k in keys)) ** 0.5


def validations(metrics_file: Path) -> list[dict]:
    """A fine-tuning run's validation reports (the ``metrics.jsonl`` lines with ``val_metric``)."""
    lines = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return [r for r in lines if r.get("val_metric") is not None]


def val_flat(metrics_file: Path) -> bool:
    """Whether a fine-tuning run's validation metric never moved (validated at least twice, always the same)."""
    values = [r["val_metric"] for r in validations(metrics_file)]
    return len(values) >= 2 and max(values) - min(values) < 1e-9


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for arm, colour in (("pretrained", "tab:blue"), ("scratch", "tab:grey")):
            ks = sorted({r["labelled"] for r in rows if r["method"] == method})
            vals = [[r["test_dice"] for r in rows if (r["method"], r["arm"], r["labelled"]) == (method, arm, k)] for k in ks]
            mean = [statistics.mean(v) for v in vals]
            ax.plot(ks, mean, "o-", color=colour, label=f"{arm} (mean)")
            ax.fill_between(ks, [min(v) for v in vals], [max(v) for v in vals], color=colour, alpha=0.2,
                            label=f"{arm} (seed range)")
        ax.set(title=f"{method}: test mean Dice", xlabel="labelled training cases", ylabel="test mean Dice",
               xscale="log", xticks=ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings_file = out / "settings.json"
    defaults = {k: v for k, v in vars(parse_args([])).items() if k != "out"}  # options added since keep their default
    if settings_file.is_file() and {**defaults, **json.loads(settings_file.read_text())} != settings:
        raise SystemExit(f"error: {out} holds runs made with other settings ({settings_file}); pass another --out")
    n_train = check_labelled(args.source, args.labelled)
    recipe = recipes(args.source, args.recipe)
    n_pool = 0
    if args.pretrain_source:
        n_pool = pool_cases(args.pretrain_source)
        overlap = pool_overlap(args.source, args.pretrain_source)
        if overlap:
            raise SystemExit(f"error: the pre-training pool {args.pretrain_source!r} holds {len(overlap)} test case(s) of "
                             f"{args.source!r} (the same file or content), e.g. {overlap[0]}: test cases never pre-train")
    out.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(settings, indent=1))

    from rayssl.config import FinetuneConfig, PretrainConfig, load_config
    from rayssl.finetune.driver import finetune
    from rayssl.finetune.weights import resolve_pretrained
    from rayssl.pretrain.driver import pretrain
    from rayssl.train.launch import init_ray

    init_ray()
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    roi = f"data.roi=[{args.roi},{args.roi},{args.roi}]"
    spacing = f"data.spacing=[{args.spacing},{args.spacing},{args.spacing}]" if args.spacing > 0 else "data.spacing=null"
    common = [f"data.source={args.source}", roi, spacing, *SPLIT, f"run.storage_path={out}", "run.preview_every=0",
              f"scale.cpus_per_worker={cpus}"]
    print(f"[label_efficiency] {args.source}: {n_train} training cases; recipes {recipe}; methods {args.methods}; "
          f"labelled {args.labelled}; {args.seeds} seeds", flush=True)

    def pretrained(method: str) -> str:
        name = f"pre-{method}"
        run = out / name
        if (run / "result.json").is_file():
            print(f"[label_efficiency] reusing {run}", flush=True)
            return str(run)
        preset = {"mae": "tiny", "genesis": "tiny_genesis", "cnn_mae": "tiny_cnn_mae"}[family(method)]
        extra = {"mae": [f"model.mask_ratio={mask_of(method)}"], "genesis": GENESIS_UNET, "cnn_mae": RESENC_UNET}[family(method)]
        overrides = [*common, f"data.recipe={recipe[family(method)]}", *extra, f"epochs={args.pretrain_epochs}",
                     f"run.name={name}"]
        if args.pretrain_source:  # the pool's epochs are longer: the same steps and warm-up steps as on the source
            scale = n_train / n_pool
            warmup = load_config(PretrainConfig, "pretrain", preset).optim.warmup_epochs * scale
            overrides += [f"data.source={args.pretrain_source}", *POOL_SPLIT, f"optim.warmup_epochs={warmup:.4f}",
                          f"epochs={max(1, round(args.pretrain_epochs * scale))}"]
        return pretrain(load_config(PretrainConfig, "pretrain", preset, overrides=overrides))

    def finetuned(method: str, arm: str, k: int, seed: int, encoder: str) -> dict:
        name = f"ft-{method}-{arm}-k{k}-s{seed}"
        result_file = out / name / "result.json"
        if not result_file.is_file():
            cfg = load_config(FinetuneConfig, "finetune", "tiny", overrides=[
                *common, f"data.recipe={recipe[family(method)]}", *model_overrides(method, args.layer_decay),
                *sampling_overrides(recipe[family(method)]), *arm_overrides(arm, args.pretrained_lr_scale),
                f"pretrained={encoder if arm == 'pretrained' else 'none'}",
                f"data.train_cases={k}", f"data.subset_seed={seed}", f"data.patches_per_volume={max(1, CROPS_PER_EPOCH // k)}",
                f"seed={seed}", f"epochs={args.epochs}", f"eval.val_every={max(1, args.epochs // 2)}",
                "eval.save_predictions=0", "eval.overlays=0", "eval.hd95=false", f"run.name={name}"])
            t = time.perf_counter()
            finetune(cfg)
            (out / name / "wall_s.txt").write_text(f"{time.perf_counter() - t:.1f}")
        result = json.loads(result_file.read_text())
        row = {"method": method, "arm": arm, "labelled": k, "seed": seed,
               "test_dice": result["test"]["mean_dice"], "val_dice": result["val"]["mean_dice"],
               "wall_s": float((out / name / "wall_s.txt").read_text()),
               "pretrained_tensors": result["pretrained"]["loaded"], "val_flat": val_flat(out / name / "metrics.jsonl"),
               "val_foreground": validations(out / name / "metrics.jsonl")[-1].get("val_foreground"),
               "weight_drift": weight_drift(resolve_pretrained(encoder), out / name / "best.safetensors")
               if family(method) != "mae" else None}
        flat = (f"  FLAT: its validation metric never moved (last validation predicted {row['val_foreground']} of the "
                "voxels foreground)") if row["val_flat"] else ""
        drift = "" if row["weight_drift"] is None else f", {row['weight_drift']:.2f} from the pre-trained weights"
        print(f"[label_efficiency] {method} {arm} k={k} seed {seed}: test Dice {row['test_dice']:.4f}{drift} "
              f"({row['wall_s']:.0f} s){flat}", flush=True)
        return row

    t0 = time.perf_counter()
    rows, pretrain_s = [], {}
    for method in args.methods:
        t = time.perf_counter()
        encoder = pretrained(method)
        pretrain_s[method] = time.perf_counter() - t
        for k in args.labelled:
            for seed in range(args.seeds):
                rows += [finetuned(method, arm, k, seed, encoder) for arm in ("pretrained", "scratch")]

    summary = summarise(rows)
    print(f"\n{'method':<9} {'k':>3} {'pretrained':>11} {'scratch':>9} {'gain':>8} {'vs strongest':>13}  gain per seed")
    for s in summary:
        strongest, flat = s["strongest_scratch"], s["flat_runs"]
        print(f"{s['method']:<9} {s['labelled']:>3} {s['pretrained_mean']:>11.4f} {s['scratch_mean']:>9.4f} "
              f"{s['gain_mean']:>+8.4f} {s['gain_vs_strongest']:>+13.4f}  {', '.join(f'{g:+.4f}' for g in s['gain_per_seed'])}"
              f"  (strongest scratch: {strongest['method']} {strongest['test_dice']:.4f})"
              + (f"; {flat} flat run(s)" if flat else ""))
    report = {"settings": settings, "recipes": recipe, "train_cases": n_train, "rows": rows, "summary": summary,
              "pretrain_wall_s": pretrain_s, "wall_s": time.perf_counter() - t0}
    (out / "label_efficiency.json").write_text(json.dumps(report, indent=1))
    plot(rows, out / "label_efficiency.png")
    print(out / "label_efficiency.json")


if __name__ == "__main__":
    sys.exit(main())
