"""Patches/s of the rayssl data flow vs a MONAI Dataset + torch DataLoader, side by side.

    python benchmarks/data_pipeline.py [--cases 16] [--roi 48 48 48] [--patches 8] [--repeats 2]

Same machine, same synthetic CT phantoms (default shape), same recipe (BTCV: RAS, 1.5x1.5x2 mm,
-175..250 HU, foreground crop) and the same number of random crops per volume:

  (a) Ray Data from NIfTI: every pass reads and preprocesses the volumes (``train_volumes`` with
      ``keep_volumes=false``), the consumer cuts new crops (``epoch_batches``, as a training worker does)
  (o) the same volumes preprocessed once and kept in Ray's object store (``keep_volumes=true``, the
      default), new crops every pass
  (b) the Parquet cache of preprocessed volumes written by ``prepare``, new crops every pass
  (c) MONAI ``Dataset`` (LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd,
      ScaleIntensityRanged, CropForegroundd, RandSpatialCropSamplesd) in a ``DataLoader`` with
      ``num_workers`` = cores

Each is warmed up with one full pass (Ray start-up and worker spawn are not timed), then timed over
``--repeats`` passes (new crops each pass), interleaved a, b, c so that load from other processes
hits all alike; the best pass counts. Prints the rates and the ratios to (c).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def monai_loader(root, roi, patches, workers, batch_size):
    import monai.transforms as mt
    from monai.data import DataLoader, Dataset, list_data_collate

    from rayssl.data.recipes import RECIPES

    r = RECIPES["ct_btcv"]
    keys = ["image", "label"]
    transform = mt.Compose([
        mt.LoadImaged(keys, image_only=True),
        mt.EnsureChannelFirstd(keys),
        mt.Orientationd(keys, axcodes="RAS"),
        mt.Spacingd(keys, pixdim=r.spacing, mode=("bilinear", "nearest")),
        mt.ScaleIntensityRanged("image", a_min=r.window[0], a_max=r.window[1], b_min=0.0, b_max=1.0, clip=True),
        mt.CropForegroundd(keys, source_key="image", allow_smaller=True),
        mt.RandSpatialCropSamplesd(keys, roi_size=roi, num_samples=patches, random_size=False),
    ])  # fmt: skip
    from rayssl.config import DataConfig
    from rayssl.data.sources import resolve_source

    cases = resolve_source(DataConfig(source=f"msd:{root}")).cases
    items = [{"image": c.image[0], "label": c.label} for c in cases if c.split == "train"]
    ds = Dataset(items, transform)
    # each item yields `patches` crops; list_data_collate flattens them into one batch
    per_item = max(1, batch_size // patches)
    # forkserver: forking this process once Ray's threads run can deadlock a worker's queue
    loader = DataLoader(ds, batch_size=per_item, shuffle=True, num_workers=workers, collate_fn=list_data_collate,
                        persistent_workers=workers > 0, multiprocessing_context="forkserver" if workers > 0 else None)
    return loader, len(items) * patches


def consume(batches) -> int:
    n = 0
    for b in batches:
        x = b["image"]
        n += x.shape[0]
        torch.as_tensor(x).float().sum()  # touch the data, as a training step would
    return n


def measure(producers: dict, repeats: int) -> dict:
    """Best patches/s per producer; passes are interleaved so machine load hits all alike."""
    for make in producers.values():
        consume(make(0))  # warm-up pass: worker processes, imports, file cache
    rates = {name: [] for name in producers}
    counts = {}
    for rep in range(repeats):
        for name, make in producers.items():
            t0 = time.perf_counter()
            counts[name] = consume(make(rep + 1))
            rates[name].append(counts[name] / (time.perf_counter() - t0))
    return {name: (max(r), counts[name]) for name, r in rates.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--roi", type=int, nargs=3, default=[48, 48, 48])
    p.add_argument("--patches", type=int, default=8, help="random crops per volume")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None, help="where phantoms and the cache go, kept "
                   "(default: a temporary directory removed at the end)")
    args = p.parse_args()
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
    from rayssl.data.pipeline import prepare, train_volumes
    from rayssl.data.synthetic import make_ct_phantoms

    root = make_ct_phantoms(os.path.join(work, "ct"), n=args.cases, seed=0)
    # the train split of the default 5-fold split: all three read exactly these cases
    data = DataConfig(source=f"msd:{root}", recipe="ct_btcv", roi=tuple(args.roi), patches_per_volume=args.patches,
                      sampling="random", splits=["train"])
    print(f"{args.cases} CT phantoms (train split) in {root}, roi {tuple(args.roi)}, {args.patches} crops/volume, {cores} cores")

    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)  # not timed
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    cache = prepare(PrepareConfig(data=data, out=os.path.join(work, "cache"), rows_per_file=4))
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    kept = train_volumes(data, ["image"])  # preprocessed once into the object store
    kept_s = time.perf_counter() - t0
    loader, n_expected = monai_loader(root, tuple(args.roi), args.patches, cores, args.batch_size)
    streamed = train_volumes(data.model_copy(update={"keep_volumes": False}), ["image"])
    cached = train_volumes(data.model_copy(update={"cache_dir": cache}), ["image"])

    def crops(ds):
        return lambda epoch: epoch_batches(ds.iter_rows(), data, epoch, args.batch_size, ["image"])

    res = measure({"a": crops(streamed), "o": crops(kept), "b": crops(cached), "c": lambda epoch: loader}, args.repeats)
    assert all(n == n_expected for _, n in res.values()), (res, n_expected)
    rate = {k: r for k, (r, _) in res.items()}
    print(f"(a) Ray Data from NIfTI, every pass:   {rate['a']:8.1f} patches/s")
    print(f"(o) volumes kept in the object store:  {rate['o']:8.1f} patches/s (preprocessing once: {kept_s:.1f} s)")
    print(f"(b) Parquet cache of volumes:          {rate['b']:8.1f} patches/s (prepare: {prepare_s:.1f} s)")
    print(f"(c) MONAI Dataset + DataLoader:        {rate['c']:8.1f} patches/s ({cores} workers)")
    print(f"    {n_expected} patches per pass, new crops every pass, best of {args.repeats} interleaved passes "
          "after one warm-up pass each")
    print(f"(a)/(c) = {rate['a'] / rate['c']:.2f}  (target >= 1.0)")
    print(f"(o)/(c) = {rate['o'] / rate['c']:.2f}")
    print(f"(b)/(c) = {rate['b'] / rate['c']:.2f}  (target >= 3.0)")
    ray.shutdown()


if __name__ == "__main__":
    main()
