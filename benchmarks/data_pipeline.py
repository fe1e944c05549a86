"""Patches/s of rayssl's data flow against MONAI's datasets, first epoch and later epochs, with memory.

    python benchmarks/data_pipeline.py [--cases 16] [--roi 48 48 48] [--patches 8] [--epochs 3] [--workdir DIR]

Same machine, the same synthetic CT phantoms, recipe (BTCV: RAS, 1.5 x 1.5 x 2 mm, -175..250 HU, foreground
crop), ROI and crops per volume, new crops and flips every epoch in all of them:

* rayssl from NIfTI: Ray Data reads and preprocesses every epoch (``keep_volumes=false``), the consumer cuts
  crops as a training worker does (``epoch_batches``);
* rayssl kept: preprocessed once into Ray's object store (``keep_volumes=true``; ``auto``'s choice for a set that
  fits the budget), read from it every epoch as a training worker reads its share;
* rayssl cache: the volume cache written by ``prepare`` (one Arrow file per case), each file memory-mapped every
  epoch as a training worker reads its share;
* MONAI ``Dataset``, ``PersistentDataset`` (deterministic transforms cached on disk) and ``CacheDataset``
  (``cache_rate=1.0``, in RAM), each in a ``DataLoader`` with as many workers as cores, the crop
  (``RandSpatialCropSamplesd``) and flips (``RandFlipd``) after the cache.

For each: the first epoch (caches are built then) and the median of the later ones, in patches/s, and the
peak resident memory of all processes (this one, Ray's, the loader workers) above the idle baseline,
sampled every 0.1 s. Also the bandwidth at which one core reads the cache's volumes (map the file, copy every byte
out) against the ``memcpy`` bound of the same bytes measured in the same run. The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time

import torch


def tree_rss_mb() -> float:
    """Resident memory of this process and all its descendants (Ray's processes, loader workers), MB."""
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


class PeakRSS:
    """The largest ``sample()`` (MB; default :func:`tree_rss_mb`) seen while the block runs, sampled every ``every``
    seconds, and the value at its ``start``."""

    def __init__(self, sample=tree_rss_mb, every: float = 0.1):
        self._sample, self._every = sample, every

    def __enter__(self):
        self.start = self.peak = self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(self._every):
            self.peak = max(self.peak, self._sample())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def monai_loader(kind: str, items: list[dict], roi, patches: int, workers: int, batch_size: int, cache_dir: str):
    import monai.transforms as mt
    from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset, list_data_collate

    from rayssl.config.recipes import RECIPES

    r = RECIPES["ct_btcv"]
    keys = ["image", "label"]
    deterministic = [
        mt.LoadImaged(keys, image_only=True), mt.EnsureChannelFirstd(keys), mt.Orientationd(keys, axcodes="RAS"),
        mt.Spacingd(keys, pixdim=r.spacing, mode=("bilinear", "nearest")),
        mt.ScaleIntensityRanged("image", a_min=r.window[0], a_max=r.window[1], b_min=0.0, b_max=1.0, clip=True),
        mt.CropForegroundd(keys, source_key="image", allow_smaller=True),
    ]
    random = [mt.RandSpatialCropSamplesd(keys, roi_size=roi, num_samples=patches, random_size=False),
              *[mt.RandFlipd(keys, prob=0.2, spatial_axis=a) for a in range(3)]]
    transform = mt.Compose(deterministic + random)
    if kind == "Dataset":
        ds = Dataset(items, transform)
    elif kind == "PersistentDataset":
        ds = PersistentDataset(items, transform, cache_dir=cache_dir)
    else:
        ds = CacheDataset(items, transform, cache_rate=1.0, num_workers=workers, progress=False)
    # forkserver: forking this process once Ray's threads run can deadlock a worker's queue
    return DataLoader(ds, batch_size=max(1, batch_size // patches), shuffle=True, num_workers=workers,
                      collate_fn=list_data_collate, persistent_workers=workers > 0,
                      multiprocessing_context="forkserver" if workers > 0 else None)


def consume(batches) -> int:
    n = 0
    for b in batches:
        x = b["image"]
        n += x.shape[0]
        torch.as_tensor(x).float().sum()  # touch the data, as a training step would
    return n


def run(make_epoch, epochs: int) -> dict:
    """Patches/s of the first epoch and the median of the later ones, and the peak memory."""
    base = tree_rss_mb()
    times, n = [], 0
    with PeakRSS() as rss:
        for epoch in range(epochs):
            t0 = time.perf_counter()
            n = consume(make_epoch(epoch))
            times.append(time.perf_counter() - t0)
    return {"first_epoch": n / times[0], "later_epochs": n / statistics.median(times[1:]), "patches": n,
            "peak_rss_mb": rss.peak - base}


def read_bandwidth(cache: str, repeats: int = 5) -> dict:
    """GB/s at which one core reads the cache's training volumes (memory-map each file, copy every byte of its image
    into a buffer) against ``memcpy`` of the same arrays from memory, median of ``repeats`` passes each (the files
    in the page cache, as in the later epochs of a run)."""
    import numpy as np

    from rayssl.data.cache import read_case, read_manifest

    torch.set_num_threads(1)
    root = os.path.join(cache, "train")
    paths = [os.path.join(root, f) for f in read_manifest(cache)["splits"]["train"]["files"]]
    images = [np.array(read_case(p, ("image",))["image"]) for p in paths]
    nbytes = sum(a.nbytes for a in images)
    buffers = [np.empty_like(a) for a in images]

    def passes(copy_one) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(len(paths)):
                copy_one(i)
            times.append(time.perf_counter() - t0)
        return nbytes / statistics.median(times) / 1e9

    read = passes(lambda i: np.copyto(buffers[i], read_case(paths[i], ("image",))["image"]))
    memcpy = passes(lambda i: np.copyto(buffers[i], images[i]))
    return {"read_gb_per_s_one_core": read, "memcpy_gb_per_s_one_core": memcpy, "read_vs_memcpy": read / memcpy,
            "volumes": len(paths), "gb": nbytes / 1e9}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--roi", type=int, nargs=3, default=[48, 48, 48])
    p.add_argument("--patches", type=int, default=8, help="random crops per volume")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="the first, then the later ones (median)")
    p.add_argument("--workdir", default=None, help="where phantoms and caches go, kept (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.workdir:
        run_benchmark(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="rayssl-bench-") as work:
            run_benchmark(args, work)


def run_benchmark(args: argparse.Namespace, work: str) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cores = os.cpu_count() or 1

    import ray

    from rayssl.config import DataConfig, PrepareConfig
    from rayssl.data.crops import epoch_batches
    from rayssl.data.cache import read_manifest
    from rayssl.data.pipeline import prepare, train_volumes
    from rayssl.data.sources import resolve_source
    from rayssl.data.synthetic import make_ct_phantoms

    root = make_ct_phantoms(os.path.join(work, "ct"), n=args.cases, seed=0)
    data = DataConfig(source=f"msd:{root}", recipe="ct_btcv", roi=tuple(args.roi), patches_per_volume=args.patches,
                      sampling="random", flip_prob=0.2, splits=["train"])
    items = [{"image": c.image[0], "label": c.label} for c in resolve_source(data).split("train")]
    print(f"{len(items)} CT phantoms (train split), roi {tuple(args.roi)}, {args.patches} crops/volume, "
          f"{args.epochs} epochs, {cores} cores", flush=True)
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)  # not timed
    ray.data.DataContext.get_current().enable_progress_bars = False
    cache = prepare(PrepareConfig(data=data, out=os.path.join(work, "cache")), resolve_source(data), "ct_btcv")

    def crops(make_volumes):
        holder = {}

        def epoch(e):
            if "rows" not in holder:  # built in the first epoch: its preprocessing counts there
                # what a training worker reads: its kept or cached volumes, or the streamed dataset as its shard
                volumes = make_volumes()
                holder["rows"] = volumes.volumes.epoch_rows(0, 1) if volumes.volumes else volumes.dataset.iter_rows
            return epoch_batches(holder["rows"](), data, e, args.batch_size, ["image"])

        return epoch

    results = {}
    producers = {
        "rayssl from NIfTI": crops(lambda: train_volumes(data.model_copy(update={"keep_volumes": False}), ["image"],
                                                         resolve_source(data), "ct_btcv")),
        "rayssl kept": crops(lambda: train_volumes(data.model_copy(update={"keep_volumes": True}), ["image"],
                                                   resolve_source(data), "ct_btcv")),
        "rayssl cache": crops(lambda: train_volumes(data.model_copy(update={"cache_dir": cache}), ["image"], None,
                                                    "ct_btcv", read_manifest(cache))),
    }
    for name, make in producers.items():
        results[name] = run(make, args.epochs)
        print(f"  {name:<22} {results[name]}", flush=True)
    for kind in ("Dataset", "PersistentDataset", "CacheDataset"):
        holder = {}

        def epoch(e, kind=kind, holder=holder):
            if "loader" not in holder:
                holder["loader"] = monai_loader(kind, items, tuple(args.roi), args.patches, cores, args.batch_size,
                                                os.path.join(work, "persistent"))
            return holder["loader"]

        results[f"MONAI {kind}"] = run(epoch, args.epochs)
        print(f"  MONAI {kind:<16} {results[f'MONAI {kind}']}", flush=True)
        holder.clear()
    bandwidth = read_bandwidth(cache)
    volume_mb = sum(os.path.getsize(os.path.join(cache, "train", f)) for f in os.listdir(os.path.join(cache, "train")))
    ray.shutdown()

    def ratio(a, b, key="later_epochs"):
        return results[a][key] / results[b][key]

    print(f"\n{'':<24} {'epoch 1':>10} {'later':>10} {'peak RSS':>10}   (patches/s; MB above idle)")
    for name, r in results.items():
        print(f"{name:<24} {r['first_epoch']:>10.1f} {r['later_epochs']:>10.1f} {r['peak_rss_mb']:>10.0f}")
    summary = {
        "cached_vs_persistent_later": ratio("rayssl cache", "MONAI PersistentDataset"),
        "cached_vs_cachedataset_later": ratio("rayssl cache", "MONAI CacheDataset"),
        "cached_vs_cachedataset_memory": results["rayssl cache"]["peak_rss_mb"] / max(1.0, results["MONAI CacheDataset"]["peak_rss_mb"]),
        "nifti_vs_dataset_later": ratio("rayssl from NIfTI", "MONAI Dataset"),
        "kept_vs_cachedataset_later": ratio("rayssl kept", "MONAI CacheDataset"),
        **bandwidth,
        "cache_files_mb": volume_mb / 2**20,
    }
    print(f"rayssl cache / PersistentDataset (later epochs) = {summary['cached_vs_persistent_later']:.2f} (target >= 2)")
    print(f"rayssl cache / CacheDataset (later epochs) = {summary['cached_vs_cachedataset_later']:.2f} (target >= 1.0), "
          f"memory {summary['cached_vs_cachedataset_memory']:.2f}x (target < 0.5)")
    print(f"rayssl from NIfTI / Dataset (later epochs) = {summary['nifti_vs_dataset_later']:.2f} (target >= 1.0)")
    print(f"one core reads the cache's volumes at {bandwidth['read_gb_per_s_one_core']:.2f} GB/s (target >= 1), memcpy "
          f"{bandwidth['memcpy_gb_per_s_one_core']:.2f} GB/s: {bandwidth['read_vs_memcpy']:.2f} of the bound")
    print(json.dumps({"results": results, "summary": summary}))


if __name__ == "__main__":
    main()
