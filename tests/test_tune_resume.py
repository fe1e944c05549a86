"""Resume: the sweep driver is killed while a trial runs; re-running restores the Tuner, keeps finished trials.

Every test signs with a key of its own (``RAYSSL_SWEEP_KEY``), never the user's ``~/.config/rayssl/sweep.key``.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import read_jsonl

FAKE_TRIAL = textwrap.dedent('''
    def fake_trial(params, sweep, sweep_dir):
        """Stands in for pre-training + fine-tuning: 4 cheap validations; the 2nd trial kills the driver once."""
        import os, signal, time
        from pathlib import Path
        from ray import tune

        tmp = Path(sweep_dir).parent
        tid = tune.get_context().get_trial_id()
        with open(tmp / "starts.txt", "a") as f:
            f.write(tid + "\\n")
        starts = (tmp / "starts.txt").read_text().split()
        if len(set(starts)) == 2 and not (tmp / "killed").exists():
            (tmp / "killed").write_text(tid)
            time.sleep(3.0)  # the driver saves its experiment state meanwhile
            os.kill(int((tmp / "driver.pid").read_text()), signal.SIGKILL)
            time.sleep(60)
        for epoch in range(1, 5):
            tune.report({"val_metric": 0.1 * epoch + params["lr"], "epoch": epoch})
''')

DRIVER = textwrap.dedent('''
    import os, sys
    from pathlib import Path
    import ray
    ray.init(address=sys.argv[1], log_to_driver=False)
    Path(sys.argv[2], "driver.pid").write_text(str(os.getpid()))
    from rayssl.config import SweepConfig
    from rayssl.tune.sweep import run_sweep
    exec(Path(sys.argv[2], "fake_trial.py").read_text())
    run_sweep(SweepConfig.model_validate_json(Path(sys.argv[2], "sweep.cfg.json").read_text()), trainable=fake_trial)
''')


def test_killed_driver_resumes_without_losing_finished_trials(ray_session, tmp_path, monkeypatch):
    from rayssl.config import SweepConfig, load_config
    from rayssl.tune.sweep import run_sweep

    cfg = load_config(SweepConfig, "tune", "tiny", overrides=[
        "num_samples=3", "baseline=false", "name=resume", f"storage_path={tmp_path}", "space={lr: {low: 0.001, high: 0.01}}"])
    (tmp_path / "sweep.cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "fake_trial.py").write_text(FAKE_TRIAL)
    (tmp_path / "driver.py").write_text(DRIVER)
    monkeypatch.setenv("RAYSSL_SWEEP_KEY", "a test key of 32 characters ...")  # the driver's too
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_AUTH_MODE": "disabled"}
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), address, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]  # SIGKILL: the driver died mid-sweep
    first, second = (tmp_path / "starts.txt").read_text().split()
    sweep_dir = tmp_path / "resume"
    finished_before = (sweep_dir / first / "result.json").read_text()
    assert (sweep_dir / "tune_state.seal").is_file()  # the killed driver had signed Tune's state as Tune saved it

    scope: dict = {}
    exec(FAKE_TRIAL, scope)
    assert run_sweep(cfg, trainable=scope["fake_trial"]) == str(sweep_dir)

    starts = (tmp_path / "starts.txt").read_text().split()
    assert starts.count(first) == 1  # the finished trial was not run again
    assert starts.count(second) == 2  # the interrupted one resumed
    assert len(set(starts)) == 3
    assert (sweep_dir / first / "result.json").read_text() == finished_before
    import csv

    with (sweep_dir / "leaderboard.csv").open() as f:
        board = {r["trial_id"]: r for r in csv.DictReader(f)}
    assert set(board) == set(starts)
    for tid in set(starts):
        reports = read_jsonl(sweep_dir / tid / "result.json")
        epochs = [r["epoch"] for r in reports]
        assert epochs == list(range(1, len(epochs) + 1))  # ASHA may stop a trial after a rung
        assert len(epochs) == 4 or board[tid]["status"] == "stopped"
        lr = json.loads((sweep_dir / tid / "params.json").read_text())["lr"]
        assert float(board[tid]["val_metric"]) == reports[-1]["val_metric"] == 0.1 * len(epochs) + lr
    assert len(finished_before.splitlines()) == 4  # the first trial had finished all its epochs before the kill


INTERRUPTING_TRIAL = textwrap.dedent('''
    def fake_trial(params, sweep, sweep_dir):
        """4 cheap validations; the 2nd trial to start sends the driver one Ctrl+C (SIGINT)."""
        import os, signal, time
        from pathlib import Path
        from ray import tune

        tmp = Path(sweep_dir).parent
        tid = tune.get_context().get_trial_id()
        with open(tmp / "starts.txt", "a") as f:
            f.write(tid + "\\n")
        if len(set((tmp / "starts.txt").read_text().split())) == 2 and not (tmp / "interrupted").exists():
            (tmp / "interrupted").write_text(tid)
            os.kill(int((tmp / "driver.pid").read_text()), signal.SIGINT)
            time.sleep(60)
        for epoch in range(1, 5):
            tune.report({"val_metric": 0.1 * epoch + params["lr"], "epoch": epoch})
''')

INTERRUPTED_DRIVER = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    import ray
    ray.init(address=sys.argv[1], log_to_driver=False)
    Path(sys.argv[2], "driver.pid").write_text(str(os.getpid()))
    import rayssl.tune.sweep as sweep
    from rayssl.config import SweepConfig
    sweep.run_baseline = lambda cfg, sweep_dir: Path(sys.argv[2], "baseline-ran").write_text("yes")
    exec(Path(sys.argv[2], "fake_trial.py").read_text())
    try:
        sweep.run_sweep(SweepConfig.model_validate_json(Path(sys.argv[2], "sweep.cfg.json").read_text()),
                        trainable=fake_trial)
    except sweep.SweepInterrupted as e:
        Path(sys.argv[2], "stopped.txt").write_text(f"{time.time()}\\n{e}")
        sys.exit(130)
''')


def test_ctrl_c_stops_the_sweep_before_the_baseline_and_resumes(ray_session, tmp_path, monkeypatch):
    import time

    import rayssl.tune.sweep as sweep
    from rayssl.config import SweepConfig, load_config

    cfg = load_config(SweepConfig, "tune", "tiny", overrides=[
        "num_samples=3", "baseline=true", "name=ctrlc", f"storage_path={tmp_path}", "space={lr: {low: 0.001, high: 0.01}}"])
    (tmp_path / "sweep.cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "fake_trial.py").write_text(INTERRUPTING_TRIAL)
    (tmp_path / "driver.py").write_text(INTERRUPTED_DRIVER)
    monkeypatch.setenv("RAYSSL_SWEEP_KEY", "a test key of 32 characters ...")  # the driver's too
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_AUTH_MODE": "disabled"}
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), address, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 130, proc.stderr[-3000:]
    stopped_at, message = (tmp_path / "stopped.txt").read_text().split("\n", 1)
    assert float(stopped_at) - (tmp_path / "interrupted").stat().st_mtime < 30  # promptly, not after the sleeping trial
    assert "re-run with name=ctrlc" in message and "of 3 trials finished" in message
    assert not (tmp_path / "baseline-ran").exists() and not (tmp_path / "ctrlc" / "leaderboard.csv").exists()
    assert len(set((tmp_path / "starts.txt").read_text().split())) == 2  # no further trial started

    baseline = []
    monkeypatch.setattr(sweep, "run_baseline", lambda cfg, sweep_dir: baseline.append(sweep_dir))
    scope: dict = {}
    exec(INTERRUPTING_TRIAL, scope)
    start = time.time()
    assert sweep.run_sweep(cfg, trainable=scope["fake_trial"]) == str(tmp_path / "ctrlc")
    assert baseline == [str(tmp_path / "ctrlc")] and (tmp_path / "ctrlc" / "leaderboard.csv").is_file()
    assert len(set((tmp_path / "starts.txt").read_text().split())) == 3 and time.time() - start < 300


MLFLOW_READ_BACK = textwrap.dedent('''
    import json, sys
    from mlflow import MlflowClient

    record = json.loads(open(sys.argv[1]).read())
    client = MlflowClient(record["mlflow_uri"])
    parent = client.get_run(record["mlflow_run_id"])
    trials = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    print(json.dumps({"status": parent.info.status, "num_samples": parent.data.params["num_samples"],
                      "artifacts": [a.path for a in client.list_artifacts(parent.info.run_id)],
                      "trials": [{"history": len(client.get_metric_history(t.info.run_id, "val_metric")),
                                  "params": sorted(t.data.params)} for t in trials]}))
''')


def test_an_mlflow_tracked_sweep_nests_a_run_per_trial_under_its_own(ray_session, tmp_path, monkeypatch):
    """Read back by a fresh MlflowClient in a process without MLFLOW_ALLOW_FILE_STORE: the sweep's SQLite store."""
    import rayssl.tune.sweep as sweep
    from rayssl.config import SweepConfig, load_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("RAYSSL_SWEEP_KEY", "a test key of 32 characters ...")
    cfg = load_config(SweepConfig, "tune", "tiny", overrides=[
        "num_samples=2", "baseline=false", "name=tracked", f"storage_path={tmp_path}", "tracker=mlflow",
        "space={lr: {low: 0.001, high: 0.01}}"])
    scope: dict = {}
    exec(FAKE_TRIAL.replace("len(set(starts)) == 2", "False"), scope)  # no driver to kill here
    sweep_dir = Path(sweep.run_sweep(cfg, trainable=scope["fake_trial"]))
    record = json.loads((sweep_dir / "tracker.json").read_text())
    assert record["mlflow_uri"] == f"sqlite:///{sweep_dir / 'mlflow.db'}" and not (sweep_dir / "mlruns").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-c", MLFLOW_READ_BACK, str(sweep_dir / "tracker.json")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["status"] == "FINISHED" and got["num_samples"] == "2"
    assert set(got["artifacts"]) >= {"leaderboard.csv", "leaderboard.md"}
    assert len(got["trials"]) == 2
    for trial in got["trials"]:
        assert trial["history"] >= 1 and "lr" in trial["params"]


def test_a_resume_refuses_planted_tune_state_and_resumes_once_it_is_gone(ray_session, tmp_path, monkeypatch):
    """A finished sweep's re-run restores it; a newer ``searcher-state-*.pkl`` planted in it is the one Tune would
    unpickle on that restore (it loads the newest by name): the resume stops first, and nothing runs."""
    import pickle

    from ray.tune.experiment.trial import Trial

    import rayssl.tune.sweep as sweep
    from rayssl.config import SweepConfig, load_config
    from rayssl.tune.seal import UntrustedSweepState

    monkeypatch.setenv("RAYSSL_SWEEP_KEY", "a test key of 32 characters ...")
    cfg = load_config(SweepConfig, "tune", "tiny", overrides=[
        "num_samples=2", "baseline=false", "name=planted", f"storage_path={tmp_path}",
        "space={lr: {low: 0.001, high: 0.01}}"])
    scope: dict = {}
    exec(FAKE_TRIAL.replace("len(set(starts)) == 2", "False"), scope)
    sweep_dir = Path(sweep.run_sweep(cfg, trainable=scope["fake_trial"]))
    signed = json.loads((sweep_dir / "tune_state.seal").read_text())["files"]
    assert {n.split("-")[0] for n in signed} == {"tuner.pkl", "experiment_state", "search_gen_state", "searcher"}
    assert Trial.get_pickled_error(None) is None  # no trial's error.pkl is unpickled from storage either

    marker = tmp_path / "ran"
    planted = sweep_dir / "searcher-state-2099-01-01_00-00-00.pkl"
    planted.write_bytes(b"cbuiltins\nexec\n(V" + f"open({str(marker)!r}, 'w').close()".encode() + b"\ntR.")
    with pytest.raises(UntrustedSweepState, match=f"{planted}: Ray Tune would unpickle this file"):
        sweep.run_sweep(cfg, trainable=scope["fake_trial"])
    assert not marker.exists()
    pickle.loads(planted.read_bytes())  # the payload is live
    assert marker.exists()

    planted.unlink()
    starts = (tmp_path / "starts.txt").read_text()
    assert sweep.run_sweep(cfg, trainable=scope["fake_trial"]) == str(sweep_dir)  # the signed state resumes
    assert (tmp_path / "starts.txt").read_text() == starts  # the finished trials were not run again
