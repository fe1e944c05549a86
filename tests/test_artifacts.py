import json

import pandas as pd

from rayssl.train.artifacts import RunFiles

from conftest import read_metrics


def test_metrics_jsonl_and_csv_with_varying_keys(tmp_path):
    files = RunFiles(str(tmp_path / "run"))
    files.log_metrics({"step": 1, "loss": 0.5, "peak_mem_mb_rank0": 10.0, "peak_mem_mb_rank1": 11.0})
    files.log_metrics({"step": 2, "loss": 0.25, "peak_mem_mb_rank0": 9.0})
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]
    csv = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(csv["loss"]) == [0.5, 0.25]
    assert csv["peak_mem_mb_rank1"].isna().tolist() == [False, True]


def test_remote_run_dir_is_staged_uploaded_and_resumed(tmp_path):
    uri = f"file://{tmp_path}/bucket/run"
    first = RunFiles(uri)
    assert first.remote and first.local != tmp_path / "bucket" / "run"
    first.log_metrics({"step": 1, "loss": 1.0})
    first.write_json("result.json", {"ok": True})
    first.sync()
    assert json.loads((tmp_path / "bucket" / "run" / "result.json").read_text()) == {"ok": True}
    assert first.uri("result.json") == f"{uri}/result.json"

    resumed = RunFiles(uri, pull_metrics=True)  # e.g. the rank-0 worker after a restart
    resumed.log_metrics({"step": 2, "loss": 0.5})
    resumed.sync()
    assert [r["step"] for r in read_metrics(tmp_path / "bucket" / "run")] == [1, 2]
    staging = resumed.local
    assert staging.is_dir()
    del resumed
    assert not staging.exists()  # the staging folder goes with its RunFiles
    assert (tmp_path / "bucket" / "run" / "metrics.jsonl").is_file()


def test_a_resume_keeps_each_step_once(tmp_path):
    files = RunFiles(str(tmp_path / "run"))
    for step in (2, 4, 6):
        files.log_metrics({"step": step, "loss": 1.0 / step})
    files.keep_metrics_until(3)  # resumed from the checkpoint at step 2..3: steps 4 and 6 are trained again
    for step in (4, 6):
        files.log_metrics({"step": step, "loss": 0.1})
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert list(pd.read_csv(tmp_path / "run" / "metrics.csv")["step"]) == [2, 4, 6]
