"""Experiment trackers with the real libraries: MLflow SQLite store, TensorBoard event files, W&B offline files."""

import json
import struct
import zlib

import pytest

from rayssl.train.artifacts import RunFiles
from rayssl.train.trackers import Tracker, check_installed, flatten, track_artifacts

CONFIG = {"data": {"roi": [32, 32, 32], "source": "synthetic:ct:8"}, "epochs": 3, "optim": {"lr": 0.001}}
LINES = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "world_size": 1, "note": "text is skipped"} for s in (1, 2, 3)]


def _run(tmp_path, kind):
    files = RunFiles(str(tmp_path / "run"))
    (files.local / "result.json").write_text("{}")
    tracker = Tracker(kind, files.local, "run", CONFIG)  # as the rank-0 worker opens it
    for line in LINES:
        tracker.log(line, line["step"])
    tracker.close(finished=False)
    track_artifacts(kind, files, "run", ["result.json"])  # the driver, at the end
    return files.local


def test_flatten_gives_dotted_parameters_and_a_missing_library_is_named(monkeypatch):
    assert flatten(CONFIG) == {"data.roi": "[32, 32, 32]", "data.source": "synthetic:ct:8", "epochs": "3",
                               "optim.lr": "0.001"}
    import importlib.util

    check_installed("none")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r'run.tracker=mlflow needs mlflow: pip install -e "\.\[mlflow\]"'):
        check_installed("mlflow")


READ_BACK = """
import json, sys
from mlflow import MlflowClient

record = json.loads(open(sys.argv[1]).read())
client = MlflowClient(record["mlflow_uri"])
run = client.get_run(record["mlflow_run_id"])
print(json.dumps({"params": run.data.params, "status": run.info.status, "metrics": sorted(run.data.metrics),
                  "loss": [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")],
                  "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)]}))
"""


def test_mlflow_default_store_is_sqlite_that_mlflow_reads_with_its_own_defaults(tmp_path, monkeypatch, caplog):
    """A fresh MlflowClient in a process without MLFLOW_ALLOW_FILE_STORE (MLflow 3's file store is refused there)."""
    import logging
    import os
    import subprocess
    import sys

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with caplog.at_level(logging.INFO, logger="rayssl.train.trackers"):
        run_dir = _run(tmp_path, "mlflow")
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # rayssl no longer opts its own process in
    record = json.loads((run_dir / "tracker.json").read_text())
    db = (run_dir / "mlflow.db").resolve()
    assert record["mlflow_uri"] == f"sqlite:///{db}" and not (run_dir / "mlruns").exists()
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in caplog.text
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-c", READ_BACK, str(run_dir / "tracker.json")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["params"]["data.roi"] == "[32, 32, 32]" and got["params"]["optim.lr"] == "0.001"
    assert got["loss"] == [[1, 1.0], [2, 0.5], [3, 1 / 3]] and got["status"] == "FINISHED"
    assert got["metrics"] == ["loss", "lr", "world_size"]  # text is skipped
    assert got["artifacts"] == ["result.json"] and (run_dir / "mlartifacts").is_dir()
    assert not (tmp_path / "mlruns").exists()  # nothing written beside the process's working directory


def test_tensorboard_event_files_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _run(tmp_path, "tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("loss")] == [(1, 1.0), (2, 0.5), (3, 0.333333)]
    assert "lr" in events.Tags()["scalars"]


def wandb_records(run_file) -> list:
    """The records (``wandb_internal_pb2.Record``) of a W&B offline run file, ``run-<id>.wandb``.

    Read here because wandb has no Python reader for it any more: since the Go ``wandb-core`` writes and syncs
    runs, ``wandb.sdk.internal.datastore`` is gone (0.31 has none), and offline mode writes no
    ``wandb-summary.json`` or history file. The format: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
    LevelDB's log format: 32 KiB blocks of chunks, each after a 7-byte header (CRC-32 of the type byte and the
    chunk, length, type: 1 a whole record, 2/3/4 its first/middle/last part), a block's last bytes zero padding
    where fewer than 7 are left."""
    from wandb.proto.wandb_internal_pb2 import Record

    block, header = 32768, 7
    data = run_file.read_bytes()
    assert data[:header] == b":W&B\xe1\xbe\x00", data[:header]
    records, pos, parts = [], header, b""
    while pos + header <= len(data):
        if block - pos % block < header:
            pos += block - pos % block
            continue
        crc, size, kind = struct.unpack("<IHB", data[pos:pos + header])
        chunk = data[pos + header:pos + header + size]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{run_file}: bad checksum at byte {pos}"
        parts, pos = parts + chunk, pos + header + size
        if kind in (1, 4):
            records.append(Record.FromString(parts))
            parts = b""
    assert pos == len(data) and parts == b"", f"{run_file}: a record cut short"
    return records


def test_wandb_offline_run_files_read_back(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run_dir = _run(tmp_path, "wandb")
    run_id = json.loads((run_dir / "tracker.json").read_text())["wandb_run_id"]
    # two offline runs of one id: the worker's, then the driver's that resumes it to add the files (its folder
    # gets a "-1" suffix when both start in one second)
    files = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"))
    assert len(files) == 2, list((run_dir / "wandb").iterdir())
    runs = []  # each file's records by type: {"run": [RunRecord], "history": [HistoryRecord, ...], ...}
    for path in files:
        runs.append({})
        for r in wandb_records(path):
            kind = r.WhichOneof("record_type")
            runs[-1].setdefault(kind, []).append(getattr(r, kind))
    worker, driver = sorted(runs, key=lambda kinds: kinds["run"][0].start_time.ToNanoseconds())
    for kinds in (worker, driver):
        assert [(r.run_id, r.project, r.display_name) for r in kinds["run"]] == [(run_id, "rayssl", "run")]
        assert [e.exit_code for e in kinds["exit"]] == [0]
    config = {c.key: json.loads(c.value_json) for c in worker["run"][0].config.update if not c.key.startswith("_")}
    assert config == CONFIG
    history = [{i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in h.item} for h in worker["history"]]
    assert [(h.step.num, row["_step"], row["loss"]) for h, row in zip(worker["history"], history)] == [
        (1, 1, 1.0), (2, 2, 0.5), (3, 3, 1 / 3)]
    assert [sorted(k for k in row if not k.startswith("_")) for row in history] == [["loss", "lr", "world_size"]] * 3
    assert {(row["lr"], row["world_size"]) for row in history} == {(1e-3, 1)}  # numbers only: "note" is skipped
    assert "history" not in driver and "artifact" not in worker
    assert [(a.name, a.type, [e.path for e in a.manifest.contents]) for a in driver["artifact"]] == [
        ("run-files", "run-files", ["result.json"])]
