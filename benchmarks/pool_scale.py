"""Memory and crops/s of a pool streamed from the volume cache: a small pool against one ten times larger.

    python benchmarks/pool_scale.py [--small 100] [--large 1000] [--shape 48 48 32] [--world 2] [--epochs 6]

For each pool size, in the same run: CT phantoms written as an MSD folder, prepared once into the volume cache
(``prepare``: one Ray task per case; its rate is printed), then streamed the way a run past its kept-volume budget
streams it: ``--world`` fresh processes, one per training worker, each memory-mapping its share of the case files
every epoch and cutting fresh crops (``epoch_batches``: crops, flips, the mixing buffer, batches), the data touched
as a training step would. Each process reports its crops and the peak of its resident memory while it streams
(sampled every 5 ms: the Python heap, the crops, the mapped pages of the volumes it holds), and that peak above
its resident memory before the first volume (its imports); the pool's figures are the sums over the processes.
Ray stays up (idle, as in a run whose workers read the cache themselves), and the peak of every process of the
run (this driver, Ray's processes, the workers; sampled every 20 ms) is reported beside them.

Each pool is measured ``--repeats`` times, alternating, and the small pool streams the same number of volumes as
the large one (more epochs); the table gives the medians of the rates and the largest peaks.

Targets (issue #23): peak memory of the large pool <= 1.2x the small one's, crops/s >= 0.8x. The last line is a
JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def stream_share(cache: str, rank: int, world: int, roi: tuple, patches: int, batch: int, epochs: int) -> dict:
    """One training worker's reading of the cache: ``epochs`` epochs of crops from its share of the volumes."""
    import torch

    from rayssl.config import DataConfig
    from rayssl.data.cache import read_volumes
    from rayssl.data.crops import epoch_batches

    torch.set_num_threads(1)
    data = DataConfig(roi=roi, patches_per_volume=patches, sampling="random", flip_prob=0.2)
    rows = read_volumes(cache, "train", columns=["case_id", "image"]).epoch_rows(rank, world)
    import psutil

    from data_pipeline import PeakRSS

    me = psutil.Process()
    times, crops = [], []
    with PeakRSS(lambda: me.memory_info().rss / 2**20, every=0.005) as rss:  # imports done, no volume read yet
        for epoch in range(epochs):
            t0, n = time.perf_counter(), 0
            for b in epoch_batches(rows(), data, epoch, batch, ["image"], shuffle_seed=rank):
                n += b["image"].shape[0]
                b["image"].float().sum()  # touch the data, as a training step would
            times.append(time.perf_counter() - t0)
            crops.append(n)
    return {"crops": crops, "seconds": times, "peak_rss_mb": rss.peak, "baseline_rss_mb": rss.start}


def measure(cache: str, world: int, roi: tuple, patches: int, batch: int, epochs: int) -> dict:
    """``world`` fresh processes stream their shares at once; crops/s of the first and the last epoch, peak memory
    of each, and of every process of the run (this one, Ray's, the workers) above this one and Ray's before."""
    from data_pipeline import PeakRSS, tree_rss_mb

    idle = tree_rss_mb()
    with PeakRSS(every=0.02) as tree, ProcessPoolExecutor(world, mp_context=get_context("spawn")) as pool:
        parts = list(pool.map(stream_share, [cache] * world, range(world), [world] * world, [roi] * world,
                              [patches] * world, [batch] * world, [epochs] * world))
    first, later = (sum(sum(p["crops"][e]) for p in parts) for e in (slice(0, 1), slice(1, None)))
    seconds = [max(sum(p["seconds"][e]) for p in parts) for e in (slice(0, 1), slice(1, None))]  # the slowest worker
    return {"crops_per_epoch": first, "first_epoch_crops_per_s": first / seconds[0],
            "later_epochs_crops_per_s": later / seconds[1],
            "peak_rss_mb": sum(p["peak_rss_mb"] for p in parts),
            "peak_above_imports_mb": sum(p["peak_rss_mb"] - p["baseline_rss_mb"] for p in parts),
            "all_processes_peak_mb": tree.peak, "all_processes_idle_mb": idle}


def prepare_pool(work: str, n: int, shape: tuple) -> tuple[str, dict]:
    """``n`` phantoms prepared into a cache; returns it and the preparation's figures."""
    from rayssl.config import DataConfig, PrepareConfig
    from rayssl.data.cache import read_manifest
    from rayssl.data.pipeline import prepare
    from rayssl.data.sources import resolve_source
    from rayssl.data.synthetic import make_ct_phantoms

    root = make_ct_phantoms(os.path.join(work, f"ct-{n}"), n=n, seed=0, shape=shape)
    data = DataConfig(source=f"msd:{root}", recipe="ct_btcv", roi=(32, 32, 32), test_fold=None, splits=["train"])
    source = resolve_source(data)
    t0 = time.perf_counter()
    out = prepare(PrepareConfig(data=data, out=os.path.join(work, f"cache-{n}")), source, "ct_btcv")
    seconds = time.perf_counter() - t0
    files = read_manifest(out)["splits"]["train"]["files"]
    size = sum(os.path.getsize(os.path.join(out, "train", f)) for f in files)
    return out, {"volumes": len(files), "prepare_s": seconds, "prepare_cases_per_s": len(files) / seconds,
                 "cache_mb": size / 2**20}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--large", type=int, default=1000)
    p.add_argument("--shape", type=int, nargs=3, default=[48, 48, 32], help="phantom shape before preprocessing")
    p.add_argument("--roi", type=int, nargs=3, default=[32, 32, 32])
    p.add_argument("--patches", type=int, default=4, help="crops per volume and epoch")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--world", type=int, default=2, help="training workers (processes) streaming at once")
    p.add_argument("--epochs", type=int, default=6, help="of the large pool, the first and the later ones (the small "
                   "pool runs as many more as it is smaller: the same volumes streamed)")
    p.add_argument("--repeats", type=int, default=3, help="measurements of each pool, alternating (medians)")
    p.add_argument("--workdir", default=None, help="kept (default: a temporary folder)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rayssl-pool-") as tmp:
        run(args, args.workdir or tmp)


def run(args: argparse.Namespace, work: str) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    prepare_pool(work, 2, tuple(args.shape))  # not counted: starts Ray's workers and their imports
    caches = {n: prepare_pool(work, n, tuple(args.shape)) for n in (args.small, args.large)}
    runs: dict[int, list[dict]] = {n: [] for n in caches}  # Ray stays up, idle as in a run whose workers read the cache
    for _ in range(args.repeats):
        for n, (cache, _) in caches.items():
            epochs = args.epochs * max(1, args.large // n)
            runs[n].append(measure(cache, args.world, tuple(args.roi), args.patches, args.batch_size, epochs))
            print(f"{n:>6} volumes, {epochs} epochs: {json.dumps(runs[n][-1])}", flush=True)
    results = {n: {**caches[n][1], **{k: (max if "mb" in k else statistics.median)(r[k] for r in rs) for k in rs[0]}}
               for n, rs in runs.items()}
    ray.shutdown()
    small, large = results[args.small], results[args.large]
    summary = {
        "peak_rss_large_vs_small": large["peak_rss_mb"] / small["peak_rss_mb"],
        "peak_above_imports_large_vs_small": large["peak_above_imports_mb"] / max(small["peak_above_imports_mb"], 1e-9),
        "all_processes_peak_large_vs_small": large["all_processes_peak_mb"] / small["all_processes_peak_mb"],
        "crops_per_s_large_vs_small": large["later_epochs_crops_per_s"] / small["later_epochs_crops_per_s"],
        "first_epoch_crops_per_s_large_vs_small": large["first_epoch_crops_per_s"] / small["first_epoch_crops_per_s"],
        "cache_mb_large_vs_small": large["cache_mb"] / small["cache_mb"],
    }
    print(f"\n{'volumes':>8} {'cache MB':>9} {'prepare/s':>10} {'crops/s ep1':>12} {'crops/s later':>14} "
          f"{'peak RSS MB':>12} {'above imports':>14} {'all processes':>14}")
    for n, r in results.items():
        print(f"{r['volumes']:>8} {r['cache_mb']:>9.0f} {r['prepare_cases_per_s']:>10.1f} {r['first_epoch_crops_per_s']:>12.0f} "
              f"{r['later_epochs_crops_per_s']:>14.0f} {r['peak_rss_mb']:>12.0f} {r['peak_above_imports_mb']:>14.0f} "
              f"{r['all_processes_peak_mb']:>14.0f}")
    print(f"peak memory {args.large} / {args.small} volumes = {summary['peak_rss_large_vs_small']:.2f} (target <= 1.2), "
          f"(above the imports: {summary['peak_above_imports_large_vs_small']:.2f}; every process of the run, Ray's and "
          f"this one's included: {summary['all_processes_peak_large_vs_small']:.2f}); cache "
          f"{summary['cache_mb_large_vs_small']:.1f}x")
    print(f"crops/s {args.large} / {args.small} volumes (later epochs) = {summary['crops_per_s_large_vs_small']:.2f} "
          "(target >= 0.8)")
    print(json.dumps({"args": vars(args), "results": results, "summary": summary}))


if __name__ == "__main__":
    main()
