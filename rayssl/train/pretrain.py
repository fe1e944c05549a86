"""``pretrain(cfg)``: the driver side of self pre-training (a Ray Train ``TorchTrainer``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import ray
import ray.train
from ray.data.dataset import MaterializedDataset
from ray.train.torch import TorchTrainer

from rayssl.config import PretrainConfig, dump_config
from rayssl.data.crops import patches_per_case
from rayssl.data.io import is_uri
from rayssl.train.artifacts import RunFiles
from rayssl.train.checkpoint import export_state, load_weights, save_export
from rayssl.train.loop import train_loop_per_worker
from rayssl.train.methods import export_meta
from rayssl.train.optim import effective_lr


def default_run_name(cfg: PretrainConfig) -> str:
    return f"{cfg.preset or 'pretrain'}-{cfg.model.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def _max_workers(cfg: PretrainConfig) -> int:
    w = cfg.scale.num_workers
    return w[1] if isinstance(w, tuple) else w


def _autoscaling_config_file() -> str | None:
    """The ``--autoscaling-config`` of this cluster's autoscaler when it runs on this machine (the head node,
    where ``ray job submit`` runs drivers; the launcher puts it at ``~/ray_bootstrap_config.yaml``)."""
    import psutil

    port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1]
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if any(a.endswith("monitor.py") for a in args) and any(a.startswith("--gcs-address=") and a.endswith(f":{port}") for a in args):
            return next((a.split("=", 1)[1] for a in args if a.startswith("--autoscaling-config=")), None)
    return None


def autoscaler_max_gpus() -> float:
    """GPUs the cluster's autoscaler can bring up (0 when it has no GPU node types or none is known).

    Read from the cluster config Ray reports (KubeRay, autoscaler v2), else from the autoscaler's config file
    on the head node (cluster launcher, ``RAY_FAKE_CLUSTER``).
    """
    from ray._private.state import state  # the same source Ray Train checks cluster capacity with

    reported = (state.get_max_resources_from_cluster_config() or {}).get("GPU", 0)
    if reported:
        return float(reported)
    path = _autoscaling_config_file()
    if not path:
        return 0.0
    import yaml

    config = yaml.safe_load(Path(path).expanduser().read_text()) or {}
    types = config.get("available_node_types", {})
    return float(sum(t.get("resources", {}).get("GPU", 0) * t.get("max_workers", config.get("max_workers", 0)) for t in types.values()))


def use_gpu(cfg: PretrainConfig) -> bool:
    """The config's choice; unset: GPUs when the cluster has some now or its autoscaler can add GPU nodes.

    A cluster whose GPU node types sit at zero nodes thus trains on GPUs (waiting for the autoscaler)
    rather than silently on CPU; the decision is printed.
    """
    if cfg.scale.use_gpu is not None:
        return cfg.scale.use_gpu
    up = ray.cluster_resources().get("GPU", 0)
    addable = 0.0 if up else autoscaler_max_gpus()
    gpu = up > 0 or addable > 0
    seen = f"{up:g} GPUs up" if up else f"no GPU up, {addable:g} the autoscaler can add"
    how = "GPU" if up else ("GPU, waiting for the autoscaler to add GPU nodes" if gpu else "CPU")
    print(f"[rayssl] scale.use_gpu not set: {seen} -> {how}", flush=True)
    return gpu


def check_cases_per_worker(num_cases: int, workers: int, source: str) -> None:
    """Every worker crops its own share of the training cases (Ray Train splits them equally)."""
    if num_cases < workers:
        raise ValueError(f"data.source={source!r} has {num_cases} training case(s) but scale.num_workers asks for "
                         f"{workers} workers; each worker needs at least one case (fewer workers or more cases)")


def scaling_config(cfg: PretrainConfig) -> ray.train.ScalingConfig:
    gpu = use_gpu(cfg)
    wanted = cfg.scale.cpus_per_worker * _max_workers(cfg)
    streams = cfg.data.cache_dir or not cfg.data.keep_volumes  # else the volumes are in the object store first
    if streams and wanted >= ray.cluster_resources().get("CPU", 0) > 0:
        print(
            f"[rayssl] warning: the train workers reserve {wanted:g} of the cluster's "
            f"{ray.cluster_resources()['CPU']:g} CPUs and Ray Data needs some to feed them; unless the "
            "autoscaler adds nodes, lower scale.cpus_per_worker",
            flush=True,
        )
    resources = {"CPU": cfg.scale.cpus_per_worker}
    if gpu:
        resources["GPU"] = cfg.scale.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=cfg.scale.num_workers, use_gpu=gpu, resources_per_worker=resources)


def data_plan(cfg: PretrainConfig):
    """The training volumes (image column only), their number and channel count."""
    from rayssl.data.pipeline import train_volumes

    if cfg.data.cache_dir:
        from rayssl.data.cache import read_manifest

        manifest = read_manifest(cfg.data.cache_dir)
        num_cases, channels, source = int(manifest["splits"]["train"]["cases"]), int(manifest["channels"]), None
        recipe = manifest["recipe"]
    else:
        from rayssl.data.pipeline import resolve_recipe
        from rayssl.data.sources import resolve_source

        source = resolve_source(cfg.data)
        num_cases, channels = len(source.split("train")), source.channels
        if num_cases == 0:
            raise ValueError(f"data.source={cfg.data.source!r} has no training cases")
        recipe = resolve_recipe(cfg.data, source)
    check_cases_per_worker(num_cases, _max_workers(cfg), cfg.data.source)
    if cfg.model.method == "genesis":  # the source's own recipe, when data.recipe is unset
        from rayssl.data.recipes import check_genesis_recipe

        check_genesis_recipe(recipe)
    ds = train_volumes(cfg.data, ["image"], "train", source)
    if isinstance(ds, MaterializedDataset):
        num_cases = ds.count()  # without the quarantined cases
    return ds, num_cases, channels


def pretrain(cfg: PretrainConfig, dataset: ray.data.Dataset | None = None) -> str:
    """Run self pre-training; returns the run directory (local path or URI).

    Args:
        cfg: the pre-training config.
        dataset: optional Ray Dataset of preprocessed volumes (``case_id`` and ``image`` ``[C, *spatial]``
            columns) to crop from instead of the one ``cfg.data`` describes.

    The run directory ``<run.storage_path>/<run.name>`` holds Ray Train's checkpoints,
    ``metrics.jsonl``, ``previews/*.png``, ``export/encoder.safetensors`` (+ ``.json`` sidecar) and
    ``result.json``. Re-running with the same ``run.name`` resumes from the last checkpoint.
    """
    name = cfg.run.name or default_run_name(cfg)
    storage = cfg.run.storage_path if is_uri(cfg.run.storage_path) else str(Path(cfg.run.storage_path).resolve())
    run_dir = f"{storage.rstrip('/')}/{name}"
    files = RunFiles(run_dir)
    files.write_json("config.json", dump_config(cfg))

    if dataset is None:
        ds, num_cases, channels = data_plan(cfg)
        shape = None
    else:
        ds, num_cases = dataset.select_columns(["case_id", "image"]), dataset.count()
        shape = dataset.take(1)[0]["image"].shape
        channels = int(shape[0])
    per_case = patches_per_case(cfg.data, shape)
    total_batch = cfg.batch_size * cfg.optim.grad_accum * _max_workers(cfg)
    plan = {
        "run_dir": run_dir,
        "num_cases": num_cases,
        "patches_per_case": per_case,
        "channels": channels,
        "lr": effective_lr(cfg.optim, total_batch),
    }
    print(
        f"[rayssl] pre-training {cfg.model.method} ({cfg.model.size}) on {cfg.data.source}: {num_cases} cases x {per_case} "
        f"fresh crops/epoch, "
        f"{cfg.epochs} epochs, total batch {total_batch}, lr {plan['lr']:.3g}, run dir {run_dir}",
        flush=True,
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": dump_config(cfg), "plan": plan},
        scaling_config=scaling_config(cfg),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
        ),
        datasets={"train": ds},
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if result.error:
        raise result.error
    metrics = result.metrics or {}

    with result.checkpoint.as_directory() as ckpt:
        weights = export_state(cfg.model.method, load_weights(ckpt))
    meta = {**export_meta(cfg, channels), "steps": metrics.get("step"), "final_loss": metrics.get("loss")}
    name_out = "encoder" if cfg.model.method == "mae" else "unet"
    weights_path, _ = save_export(weights, meta, files.path(f"export/{name_out}"))
    summary = {
        "method": cfg.model.method,
        "preset": cfg.preset,
        "final_loss": metrics.get("loss"),
        "steps": metrics.get("step"),
        "epochs": metrics.get("epoch"),
        "samples": metrics.get("samples"),
        "samples_per_s": metrics.get("samples", 0) / wall if wall > 0 else None,
        "wall_time_s": wall,
        "world_size": metrics.get("world_size"),
        "resumes": metrics.get("resumes"),
        "peak_mem_mb_max": metrics.get("peak_mem_mb_max"),
        "weights": files.uri(f"export/{weights_path.name}"),
        "checkpoint": result.checkpoint.path,
        "run_dir": run_dir,
    }
    files.write_json("result.json", summary)
    files.sync()
    print(json.dumps({k: summary[k] for k in ("final_loss", "steps", "samples_per_s", "weights")}), flush=True)
    return run_dir
