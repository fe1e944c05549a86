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
from rayssl.train.checkpoint import load_weights

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


def _train_workers() -> list[psutil.Process]:
    """Ray Train worker processes of this test session's Ray (descendants of this process)."""
    return [p for p in psutil.Process().children(recursive=True) if "RayTrainWorker" in " ".join(p.cmdline())]


def _registered_checkpoint_steps(run_dir: Path) -> list[int]:
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return [c["metrics"]["step"] for c in json.loads(snapshot.read_text())["checkpoint_results"]]
    except (OSError, ValueError, KeyError):
        return []


def test_killed_worker_recovers_from_last_checkpoint(ray_session, tmp_path, synthetic_dir):
    from rayssl.pretrain.driver import pretrain

    cfg = tiny(tmp_path, synthetic_dir, "faulty", "scale.num_workers=2", "max_steps=24", "run.checkpoint_every=4", "run.max_failures=2")
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("dir", pretrain(cfg)), daemon=True)
    thread.start()
    run_dir = tmp_path / "faulty"
    deadline = time.time() + 300
    while not _registered_checkpoint_steps(run_dir) and time.time() < deadline:
        time.sleep(0.2)
    workers = _train_workers()
    assert workers, "no Ray Train worker process found to kill"
    os.kill(workers[-1].pid, signal.SIGKILL)
    killed_at = time.time()
    thread.join(timeout=600)
    assert out.get("dir") == str(run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 24
    assert result["resumes"] >= 1
    rows = read_metrics(run_dir)
    after = [r for r in rows if r["time"] > killed_at]
    before_kill = max(r["step"] for r in rows if r["time"] <= killed_at)
    resumed_from = after[0]["step"] - cfg.run.log_every
    # at most the steps since the last checkpoint are lost
    assert before_kill - resumed_from <= cfg.run.checkpoint_every
    print(f"killed at step {before_kill}, resumed from step {resumed_from}, "
          f"first metrics {after[0]['time'] - killed_at:.1f} s after the kill")


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
