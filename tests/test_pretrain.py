"""Pre-training on Ray Train + DeepSpeed, end to end on tiny synthetic CT (2 CPU cores)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from rayssl.config import PretrainConfig, load_config
from rayssl.models.mae import MaskedAutoencoder
from rayssl.models.vit import VIT_SIZES, ViTEncoder
from rayssl.models.weights_file import load_export
from rayssl.train.checkpoint import damage, load_weights, read_state

from conftest import read_metrics


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def tiny(tmp_path, synthetic_dir, name, *overrides) -> PretrainConfig:
    return load_config(
        PretrainConfig,
        "pretrain",
        preset="tiny",
        overrides=[
            "data.source=synthetic:ct:4",
            f"data.synthetic_dir={synthetic_dir}",
            "data.roi=[32,32,32]",
            "data.patches_per_volume=8",
            "batch_size=4",
            "scale.cpus_per_worker=0.5",
            f"run.storage_path={tmp_path}",
            f"run.name={name}",
            "run.log_every=2",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def two_worker_run(ray_session, tmp_path_factory, synthetic_dir):
    from rayssl.pretrain.driver import pretrain

    tmp = tmp_path_factory.mktemp("runs")
    cfg = tiny(tmp, synthetic_dir, "zero2", "scale.num_workers=2", "scale.zero_stage=2", "epochs=8", "run.preview_every=4")
    return cfg, Path(pretrain(cfg))


def test_two_worker_deepspeed_loss_decreases(two_worker_run):
    cfg, run_dir = two_worker_run
    rows = read_metrics(run_dir)
    assert {r["world_size"] for r in rows} == {2}
    # The tiny preset's target is each patch's normalised pixels (norm-pix, as SelfMedMAE), so predicting
    # the patch mean scores about 1.0 and the loss starts a little above it: a learning run falls clearly.
    assert rows[-1]["loss"] < 0.85 * rows[0]["loss"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == rows[-1]["step"] > 0
    assert result["samples_per_s"] > 0
    assert (run_dir / "previews" / "final.png").stat().st_size > 1000
    assert all(k in rows[-1] for k in ("lr", "samples_per_s", "peak_mem_mb_rank0", "peak_mem_mb_rank1"))


def test_export_reloads_to_identical_encoder_outputs(two_worker_run):
    cfg, run_dir = two_worker_run
    result = json.loads((run_dir / "result.json").read_text())
    weights, meta = load_export(result["weights"])
    assert meta["method"] == "mae" and meta["patch_size"] == cfg.model.patch_size and meta["in_channels"] == 1

    encoder = ViTEncoder(spatial_dims=3, img_size=tuple(meta["roi"]), patch_size=meta["patch_size"], in_channels=1, **VIT_SIZES[meta["size"]])
    encoder.load_state_dict(weights, strict=True)
    full = MaskedAutoencoder(
        spatial_dims=3, img_size=(32, 32, 32), patch_size=8, in_channels=1, **VIT_SIZES["tiny"],
        decoder_embed_dim=cfg.model.decoder_embed_dim, decoder_depth=cfg.model.decoder_depth,
        decoder_num_heads=cfg.model.decoder_num_heads,
    )
    full.load_state_dict(load_weights(result["checkpoint"]))
    x = torch.rand(2, 1, 32, 32, 32)
    encoder.eval(), full.eval()
    with torch.no_grad():
        assert torch.equal(encoder(x)["tokens"], full.encoder(x)["tokens"])
    # and the export is the trained model, not a fresh one
    fresh = ViTEncoder(spatial_dims=3, img_size=(32, 32, 32), patch_size=8, in_channels=1, **VIT_SIZES["tiny"]).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x)["tokens"], encoder(x)["tokens"])


def test_resume_continues_at_step_also_on_fewer_workers(ray_session, tmp_path, synthetic_dir):
    from rayssl.pretrain.methods import build_model
    from rayssl.pretrain.driver import pretrain

    common = ("run.checkpoint_every=2", "scale.zero_stage=3")
    cfg = tiny(tmp_path, synthetic_dir, "resume", "scale.num_workers=2", "max_steps=4", *common)
    run_dir = Path(pretrain(cfg))
    assert read_metrics(run_dir)[-1]["step"] == 4
    # the ZeRO-3 checkpoint holds full, gathered weights (not the ranks' partitions)
    latest = max((d for d in run_dir.glob("checkpoint_*") if d.is_dir()), key=lambda d: d.stat().st_mtime)
    weights = load_weights(latest)
    expected = {k: v.shape for k, v in build_model(cfg, 1).state_dict().items()}
    assert {k: v.shape for k, v in weights.items()} == expected
    assert all(torch.isfinite(v).all() for v in weights.values())
    # a 2-worker checkpoint resumes on 1 worker (consolidated weights)
    pretrain(tiny(tmp_path, synthetic_dir, "resume", "scale.num_workers=1", "max_steps=6", *common))
    # same world size again: DeepSpeed restores the optimizer too
    pretrain(tiny(tmp_path, synthetic_dir, "resume", "scale.num_workers=1", "max_steps=8", *common))
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and steps[-1] == 8
    assert [r["world_size"] for r in rows if r["step"] <= 4] == [2] * len([s for s in steps if s <= 4])
    assert {r["world_size"] for r in rows if r["step"] > 4} == {1}
    assert rows[-1]["resumes"] == 2
    # resuming from the consolidated weights continues training rather than starting over
    assert max(r["loss"] for r in rows if r["step"] > 4) < rows[0]["loss"]
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 8


def _train_workers(since: float = 0.0) -> list[psutil.Process]:
    """Ray Train worker processes of this test session's Ray (descendants of this process) started at or after
    ``since`` (seconds since the epoch; an earlier test's workers may still be exiting)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(p.cmdline()) and p.create_time() >= since:
                found.append(p)
        except psutil.Error:  # exited meanwhile
            pass
    return found


def _registered_checkpoints(run_dir: Path) -> list[dict]:
    """Ray Train's registered checkpoints of a run (``checkpoint_manager_snapshot.json``), oldest first."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return list(json.loads(snapshot.read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError):
        return []


def _registered_checkpoint_steps(run_dir: Path) -> list[int]:
    return [c["metrics"]["step"] for c in _registered_checkpoints(run_dir)]


def _metric_rows_now(run_dir: Path) -> list[dict]:
    """``metrics.jsonl`` as it is now (rank 0 may be appending a line: a torn last line is left out)."""
    rows = []
    try:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
    except OSError:
        pass
    return rows


def _pretrain_in_background(cfg) -> tuple[threading.Thread, dict]:
    """``pretrain(cfg)`` in a thread; its run directory (``"dir"``) or its error (``"error"``) lands in the dict."""
    from rayssl.pretrain.driver import pretrain

    out: dict = {}

    def run() -> None:
        try:
            out["dir"] = pretrain(cfg)
        except BaseException as e:  # noqa: BLE001 - raised again by the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_until(ready, thread: threading.Thread, out: dict, what: str, timeout: float = 300) -> None:
    """Poll ``ready()`` while the run is going; fail at once when the run ended (or failed) first."""
    deadline = time.time() + timeout
    while not ready():
        if not thread.is_alive():
            raise AssertionError(f"the run ended before {what}") from out.get("error")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_killed_worker_recovers_from_last_checkpoint(ray_session, tmp_path, synthetic_dir):
    cfg = tiny(tmp_path, synthetic_dir, "faulty", "scale.num_workers=2", "max_steps=24", "run.checkpoint_every=4", "run.max_failures=2")
    t0 = time.time()
    thread, out = _pretrain_in_background(cfg)
    run_dir = tmp_path / "faulty"
    _wait_until(lambda: _registered_checkpoint_steps(run_dir), thread, out, "the first checkpoint")
    workers = _train_workers(since=t0)
    assert workers, "no Ray Train worker process found to kill"
    os.kill(workers[-1].pid, signal.SIGKILL)
    killed_at = time.time()
    trained_before_kill = max(r["step"] for r in _metric_rows_now(run_dir))  # before the resume drops lines
    thread.join(timeout=600)
    if "error" in out:
        raise out["error"]
    assert out.get("dir") == str(run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 24
    assert result["resumes"] >= 1
    rows = read_metrics(run_dir)
    after = [r for r in rows if r["time"] > killed_at]
    resumed_from = max(r["step"] for r in rows if r["resumes"] == 0)
    assert resumed_from % cfg.run.checkpoint_every == 0 and after[0]["step"] > resumed_from
    # at most the steps since the last checkpoint are lost
    assert trained_before_kill - resumed_from <= cfg.run.checkpoint_every
    print(f"killed at step {trained_before_kill}, resumed from step {resumed_from}, "
          f"first metrics {after[0]['time'] - killed_at:.1f} s after the kill")


@pytest.fixture
def cotenant(ray_session):
    """Another HIGH-priority requester of the cluster's CPUs at Ray's ``AutoscalingCoordinator``, the actor whose
    reservations Ray Train's elastic scaling policy sizes its worker group by (as a second training job on the
    cluster would be). It asks for nothing until the test calls ``claim(cpus)``; it is registered before the run
    starts, so it comes before the run in the coordinator's order (priority, then first request)."""
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        ResourceRequestPriority, get_or_create_autoscaling_coordinator)

    coordinator = get_or_create_autoscaling_coordinator()
    requester = f"rayssl-test-cotenant-{os.getpid()}"

    def claim(cpus: float) -> None:
        ray_session.get(coordinator.request_resources.remote(
            requester_id=requester, resources=[{"CPU": cpus}] if cpus else [], expire_after_s=600,
            priority=ResourceRequestPriority.HIGH))

    claim(0)
    yield claim
    ray_session.get(coordinator.cancel_request.remote(requester))


def _train_run_attempts(ray_session, name: str) -> list[tuple[float, float, int]]:
    """``(start, end, workers)`` of each attempt of Ray Train run ``name``, as Ray Train's state actor recorded
    them (``RAY_TRAIN_ENABLE_STATE_TRACKING``), oldest first; times in seconds since the epoch."""
    from ray.train.v2._internal.state.state_actor import get_state_actor

    actor = get_state_actor()
    assert actor is not None, "Ray Train's state tracking is off"
    run_ids = [i for i, run in ray_session.get(actor.get_train_runs.remote()).items() if run.name == name]
    assert len(run_ids) == 1, f"Ray Train runs named {name}: {run_ids}"
    attempts = ray_session.get(actor.get_train_run_attempts.remote())[run_ids[0]].values()
    return sorted((a.start_time_ns / 1e9, (a.end_time_ns or time.time_ns()) / 1e9, len(a.workers)) for a in attempts)


def test_elastic_run_loses_a_worker_and_finishes_on_fewer(ray_session, tmp_path, synthetic_dir, cotenant, monkeypatch):
    """``scale.num_workers=[1,2]``: Ray Train V2's elastic scaling policy sizes the worker group by the CPUs the
    cluster's AutoscalingCoordinator reserves to the run (max 2, min 1). The run starts on 2 workers (the 2 CPUs
    allow both). Then the capacity goes elsewhere, as when a node leaves or another job takes it: the co-tenant
    claims 1.5 of the 2 CPUs, and a training worker is SIGKILLed after the run trained past its last checkpoint.
    Ray Train counts a failure (``run.max_failures``), finds room for 1 worker only, and restarts the group at
    the minimum (``ElasticScalingPolicy.make_decision_for_non_running_worker_group``); rayssl resumes that
    1-worker group from the 2-worker checkpoint (the consolidated weights) and finishes. Nothing is lost but the
    steps since that checkpoint, which are trained again and logged once."""
    monkeypatch.setenv("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # the worker group of each attempt, for the check
    max_steps, checkpoint_every = 16, 4
    cfg = tiny(tmp_path, synthetic_dir, "elastic", "scale.num_workers=[1,2]", f"max_steps={max_steps}",
               f"run.checkpoint_every={checkpoint_every}", "run.max_failures=2")
    assert cfg.scale.num_workers == (1, 2)
    t0 = time.time()
    thread, out = _pretrain_in_background(cfg)
    run_dir = tmp_path / "elastic"

    def past_a_checkpoint() -> bool:  # a registered checkpoint, and steps trained after it that the kill loses
        saved = _registered_checkpoint_steps(run_dir)
        return bool(saved) and any(r["step"] > max(saved) for r in _metric_rows_now(run_dir))

    _wait_until(past_a_checkpoint, thread, out, "training past a checkpoint")
    workers = _train_workers(since=t0)
    assert workers, "no Ray Train worker process found to kill"
    cotenant(1.5)  # leaves 0.5 CPU: room for one worker of scale.cpus_per_worker=0.5
    os.kill(workers[-1].pid, signal.SIGKILL)
    killed_at = time.time()
    trained_before_kill = max(r["step"] for r in _metric_rows_now(run_dir))  # before the resume drops lines
    thread.join(timeout=600)
    assert not thread.is_alive(), "the run did not finish"
    if "error" in out:
        raise out["error"]
    assert out["dir"] == str(run_dir)

    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == max_steps and result["resumes"] >= 1 and result["world_size"] == 1

    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    # every logged step once, in order: step 1, then every run.log_every, up to the last (no gap, no duplicate)
    assert steps == [1, *range(cfg.run.log_every, max_steps + 1, cfg.run.log_every)]
    resumed_from = max(r["step"] for r in rows if r["resumes"] == 0)
    assert resumed_from % checkpoint_every == 0 and resumed_from < trained_before_kill  # the kill lost steps
    assert trained_before_kill - resumed_from <= checkpoint_every  # ... no more than since the last checkpoint
    assert all(r["time"] > killed_at for r in rows if r["resumes"] > 0)
    assert {r["resumes"] for r in rows if r["step"] > resumed_from} == {1}

    # the world size in each metric row is the size of the worker group Ray Train ran at that time
    attempts = _train_run_attempts(ray_session, cfg.run.name)
    assert [w for _, _, w in attempts] == [2, 1], attempts
    for r in rows:
        assert [w for start, end, w in attempts if start <= r["time"] <= end] == [r["world_size"]], (r, attempts)
    assert {r["world_size"] for r in rows if r["resumes"] == 0} == {2}
    assert {r["world_size"] for r in rows if r["resumes"] > 0} == {1}

    # samples per optimiser step: the global batch planned for 2 workers (batch_size x optim.grad_accum x 2) on
    # either group: the 1-worker group accumulates twice the micro-batches (rows count all workers' samples,
    # carried across the resume), so the lr schedule planned for that batch holds
    assert cfg.total_batch == cfg.batch_size * cfg.optim.grad_accum * 2
    assert rows[0]["samples"] == rows[0]["step"] * cfg.total_batch
    for prev, r in zip(rows, rows[1:]):
        assert r["samples"] - prev["samples"] == (r["step"] - prev["step"]) * cfg.total_batch, (prev, r)
    assert result["samples"] == rows[-1]["samples"] == max_steps * cfg.total_batch

    # every checkpoint Ray Train registered is at or before the final step, intact and loadable, its state saying
    # the step and the world size it was written at
    registered = _registered_checkpoints(run_dir)
    assert max(c["metrics"]["step"] for c in registered) == max_steps
    world_at = {r["step"]: r["world_size"] for r in rows}
    for c in registered:
        path = run_dir / c["checkpoint_dir_name"]
        step = c["metrics"]["step"]
        assert step <= max_steps and damage(path) is None, (path, damage(path))
        saved = read_state(path)
        assert (saved["step"], saved["world_size"]) == (step, world_at[step])
        weights = load_weights(path)
        assert weights and all(torch.isfinite(v).all() for v in weights.values())
    assert Path(result["checkpoint"]).name in {c["checkpoint_dir_name"] for c in registered}
    print(f"killed at step {trained_before_kill}, resumed from step {resumed_from} on 1 worker, "
          f"first metrics {min(r['time'] for r in rows if r['resumes'] > 0) - killed_at:.1f} s after the kill")


@pytest.mark.parametrize(
    "preset, source, roi, weights, extra",
    [
        ("tiny_genesis", "synthetic:ct:4", "[32,32,32]", "unet.safetensors", []),
        ("tiny_mae2d", "synthetic:cxr:16", "[32,32]", "encoder.safetensors", []),
    ],
)
def test_genesis_and_2d_mae_presets_train_and_export(ray_session, tmp_path, synthetic_dir, preset, source, roi, weights, extra):
    from rayssl.pretrain.driver import pretrain

    cfg = load_config(
        PretrainConfig,
        "pretrain",
        preset=preset,
        overrides=[f"data.source={source}", f"data.synthetic_dir={synthetic_dir}", f"data.roi={roi}", "max_steps=4",
                   "batch_size=4", f"run.storage_path={tmp_path}", "run.name=r", "run.log_every=1", "scale.cpus_per_worker=0.5", *extra],
    )
    run_dir = Path(pretrain(cfg))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 4 and result["weights"].endswith(weights)
    state, meta = load_export(result["weights"])
    assert meta["method"] == cfg.model.method and meta["spatial_dims"] == len(cfg.data.roi)
    losses = [r["loss"] for r in read_metrics(run_dir)]
    assert len(losses) == 4 and all(0 < v < 10 for v in losses)


def test_a_damaged_newest_checkpoint_falls_back_and_metrics_keep_each_step_once(ray_session, tmp_path, synthetic_dir):
    from rayssl.pretrain.driver import pretrain

    common = ("run.checkpoint_every=2", "scale.num_workers=1")
    run_dir = Path(pretrain(tiny(tmp_path, synthetic_dir, "damaged", "max_steps=4", *common)))
    by_step = {json.loads((d / "train_state.json").read_text())["step"]: d for d in run_dir.glob("checkpoint_*") if d.is_dir()}
    assert sorted(by_step) == [2, 4]
    shard = next((by_step[4] / "ds").glob("*model_states.pt"))
    shard.write_bytes(shard.read_bytes()[:200])  # truncated: DeepSpeed alone would fail to load it
    pretrain(tiny(tmp_path, synthetic_dir, "damaged", "max_steps=6", *common))
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # each step once, though 4 was trained twice
    assert [r["resumes"] for r in rows if r["step"] > 2] == [1, 1]  # resumed from step 2, the newest intact
