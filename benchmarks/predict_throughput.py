"""Prediction throughput: ``jobs/predict.py`` (Ray Data actors) against a plain MONAI loop, side by side.

    python benchmarks/predict_throughput.py [--model RUN] [--cases 16] [--repeats 2] [--workdir DIR]

Both predict the same synthetic CT cases with the same fine-tuned UNETR, ROI, overlap and sliding-window
batch, and write label maps on each input's own grid:

* (a) rayssl: ``rayssl.predict.predict`` with 1 and with 2 CPU actors (Ray started once, outside the timing);
* (b) MONAI: ``LoadImaged`` -> the recipe as MONAI dictionary transforms (``Orientationd``, ``Spacingd``,
  ``ScaleIntensityRanged``, ``CropForegroundd``) -> ``sliding_window_inference`` -> softmax, argmax ->
  ``Invertd`` (nearest) -> ``SaveImaged``, one case after another in one process using every core.

Without ``--model`` a tiny UNETR is fine-tuned first (1 epoch: the weights do not matter for speed). Prints
volumes/s for each and the ratios (a)/(b); medians over ``--repeats``; the last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def monai_loop(model_dir: str, images: list[str], out: Path) -> float:
    """Seconds for the plain MONAI loop over ``images``."""
    import monai.transforms as mt
    import torch
    from monai.inferers import sliding_window_inference

    from rayssl.config.recipes import RECIPES
    from rayssl.predict.models import load_model

    m = load_model(model_dir)
    net = m.build("cpu")
    r = RECIPES[m.recipe]
    pre = mt.Compose([
        mt.LoadImaged("image", image_only=False), mt.EnsureChannelFirstd("image"),
        mt.Orientationd("image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd("image", pixdim=m.spacing, mode="bilinear"),
        mt.ScaleIntensityRanged("image", a_min=r.window[0], a_max=r.window[1], b_min=0.0, b_max=1.0, clip=True),
        mt.CropForegroundd("image", source_key="image", allow_smaller=True),
    ])
    post = mt.Compose([
        mt.Activationsd("pred", softmax=True), mt.AsDiscreted("pred", argmax=True),
        mt.Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True),
        mt.SaveImaged("pred", output_dir=str(out), output_postfix="seg", separate_folder=False, print_log=False),
    ])
    t0 = time.perf_counter()
    with torch.no_grad():
        for path in images:
            d = pre({"image": path})
            d["pred"] = sliding_window_inference(d["image"][None], m.roi, 4, net, overlap=m.cfg.eval.sw_overlap,
                                                 mode="gaussian")[0]
            post(d)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a fine-tuning run directory (default: fine-tune a tiny UNETR)")
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", default=None, help="keep the data and runs here instead of a temporary folder")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rayssl-predict-bench-"))
    try:
        import ray

        from rayssl.config import FinetuneConfig, PredictConfig, load_config
        from rayssl.data.synthetic import make_ct_phantoms
        from rayssl.finetune.driver import finetune
        from rayssl.predict.driver import predict
        from rayssl.train.launch import init_ray

        init_ray()
        root = make_ct_phantoms(work / "ct", n=args.cases, seed=1)
        images = sorted(str(f) for f in (root / "imagesTr").glob("*.nii.gz"))
        model = args.model or finetune(load_config(FinetuneConfig, "finetune", "tiny", overrides=[
            "pretrained=none", f"data.synthetic_dir={work / 'syn'}", "epochs=1", f"run.storage_path={work}",
            "run.name=model", "eval.hd95=false", "eval.save_predictions=0", "eval.overlays=0"]))
        (work / "in").mkdir(exist_ok=True)
        shutil.copytree(root / "imagesTr", work / "in" / "imagesTr", dirs_exist_ok=True)
        (work / "in" / "cases.csv").write_text("image\n" + "\n".join(f"imagesTr/{Path(i).name}" for i in images))
        spec = f"csv:{work / 'in' / 'cases.csv'}"
        cpus = int(ray.cluster_resources().get("CPU", 1))
        times: dict[str, list[float]] = {"rayssl, 1 actor": [], f"rayssl, {cpus} actors": [], "MONAI loop": []}
        for rep in range(args.repeats):
            for actors in (1, cpus):
                out = work / f"out-{actors}-{rep}"
                cfg = load_config(PredictConfig, "predict", overrides=[f"actors={actors}", "use_gpu=false"])
                cfg.model, cfg.input, cfg.out = [model], spec, str(out)
                t = time.perf_counter()
                predict(cfg)
                times[f"rayssl, {actors} actor{'s' if actors > 1 else ''}"].append(time.perf_counter() - t)
            times["MONAI loop"].append(monai_loop(model, images, work / f"monai-{rep}"))
        rate = {k: args.cases / statistics.median(v) for k, v in times.items() if v}
        print(f"\n{args.cases} synthetic CT cases, tiny UNETR, ROI 32^3, CPU; median of {args.repeats}")
        for k, v in rate.items():
            print(f"  {k:<18} {v:6.2f} volumes/s   ({v / rate['MONAI loop']:.2f}x MONAI)")
        print(json.dumps({"volumes_per_s": rate, "ratio_to_monai": {k: v / rate["MONAI loop"] for k, v in rate.items()},
                          "cases": args.cases, "seconds": times}))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
