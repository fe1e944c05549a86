"""``ray job submit`` end to end: a Ray head of its own on loopback, tiny pre-training and sweep jobs.

The head runs in its own temp dir and ports, with every process tagged by an environment marker, and is
stopped by process id: it never shares or stops the test session's Ray or anyone else's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "RAYSSL_TEST_CLUSTER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalHead:
    """A Ray head node on 127.0.0.1 with its own temp dir, ports and process marker.

    Args:
        num_cpus: logical CPUs of the head.
        autoscaling_config: optional dict for Ray's fake multi-node autoscaler (``RAY_FAKE_CLUSTER``).
        dashboard: start the dashboard (needed for job submission).
        env: extra environment for every process of the cluster.
    """

    def __init__(self, num_cpus: int = 2, autoscaling_config: dict | None = None, dashboard: bool = True, env: dict | None = None):
        self.num_cpus, self.dashboard = num_cpus, dashboard
        self.autoscaling_config = autoscaling_config
        self.marker = uuid.uuid4().hex
        # short path: Ray's unix sockets live under it (107-character limit)
        self.temp_dir = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(
            {
                MARKER: self.marker,
                "RAY_AUTH_MODE": "disabled",
                "RAY_TRAIN_V2_ENABLED": "1",
                "DS_ACCELERATOR": "cpu",
                "RAY_USAGE_STATS_ENABLED": "0",
                # the job's `python` is this interpreter (the project may be an editable install in it)
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                **(env or {}),
            }
        )

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> "LocalHead":
        cmd = [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
            f"--port={self.port}", f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats", "--object-store-memory=200000000",
            # ports with fixed defaults (job agent 52365, client server 10001) taken by any other Ray here
            f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
        ]
        if self.dashboard:
            cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}"]
        else:
            cmd += ["--include-dashboard=false"]
        if self.autoscaling_config is not None:
            path = Path(self.temp_dir) / "autoscaling.json"
            path.write_text(json.dumps(self.autoscaling_config))
            cmd.append(f"--autoscaling-config={path}")
            self.env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
        try:
            subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True, timeout=180)
        except subprocess.SubprocessError as e:
            self.stop()
            raise RuntimeError(f"ray start failed: {getattr(e, 'stderr', e)}") from e
        return self

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster (found by the marker in its environment)."""
        out = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and p.environ().get(MARKER) == self.marker:
                    out.append(p)
            except (psutil.Error, OSError):
                continue
        return out

    def stop(self) -> None:
        """Terminate this cluster's processes by id (SIGTERM, then SIGKILL), then remove its temp dir."""
        quiet = 0
        for sig in (signal.SIGTERM, *[signal.SIGKILL] * 7):
            procs = self.processes()
            quiet = 0 if procs else quiet + 1
            if quiet == 2:  # nothing left, and nothing respawned meanwhile
                break
            for p in procs:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=10)
            time.sleep(0.5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def ray(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI against this cluster from the repo root."""
        return subprocess.run(
            [str(Path(sys.executable).parent / "ray"), *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )


def submit(head: LocalHead, *entrypoint: str, timeout: float = 420) -> tuple[str, str]:
    """``ray job submit --working-dir .`` with cluster/runtime_env.yaml; waits; returns (status, logs)."""
    from ray.job_submission import JobSubmissionClient

    job_id = f"rayssl-{uuid.uuid4().hex[:8]}"
    ready_by = time.time() + 120
    while True:  # right after `ray start` the head's job agent may not be up yet
        out = head.ray(
            "job", "submit", "--address", head.dashboard_url, "--submission-id", job_id,
            "--runtime-env", "cluster/runtime_env.yaml", "--working-dir", ".", "--no-wait", "--", *entrypoint,
            timeout=120,
        )
        if out.returncode == 0 or "No available agent" not in out.stderr or time.time() > ready_by:
            break
        time.sleep(3)
    assert out.returncode == 0, out.stderr[-3000:]
    client = JobSubmissionClient(head.dashboard_url)
    deadline = time.time() + timeout
    status = str(client.get_job_status(job_id))
    while not status.endswith(("SUCCEEDED", "FAILED", "STOPPED")) and time.time() < deadline:
        time.sleep(2)
        status = str(client.get_job_status(job_id))
    logs = client.get_job_logs(job_id)
    if not status.endswith(("SUCCEEDED", "FAILED", "STOPPED")):
        client.stop_job(job_id)
    return status.rsplit(".", 1)[-1], logs


@pytest.fixture(scope="module")
def head():
    h = LocalHead(num_cpus=2).start()
    try:
        yield h
    finally:
        h.stop()
    assert h.processes() == []


def test_submitted_pretraining_joins_the_cluster_and_exports_weights(head, tmp_path):
    status, logs = submit(
        head,
        "python", "jobs/pretrain.py", "data.source=synthetic:ct:2", f"data.synthetic_dir={tmp_path / 'synthetic'}",
        "data.test_fold=null",  # of the 2 cases, one validates and one trains
        "data.roi=[32,32,32]", "data.patches_per_volume=4", "batch_size=4", "max_steps=4",
        "run.checkpoint_every=2", "run.log_every=2", "run.preview_every=0", "scale.cpus_per_worker=1",
        f"run.storage_path={tmp_path / 'runs'}", "run.name=submitted",
    )
    assert status == "SUCCEEDED", logs[-4000:]
    # the driver joined the cluster it was submitted to, it did not start a Ray of its own
    assert "[rayssl] joining the Ray cluster at" in logs and "[rayssl] starting a local Ray" not in logs
    # a quiet console: rayssl's phase, epoch and result lines, not Ray Data's or Ray Train's per-step lines
    assert "TrainingReport(" not in logs and "Starting execution of Dataset" not in logs, logs[-4000:]
    assert len(logs.splitlines()) <= 25, logs[-4000:]
    run_dir = Path(logs.strip().splitlines()[-1])
    assert run_dir == tmp_path / "runs" / "submitted"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 4 and result["world_size"] == 1
    weights = Path(result["weights"])
    assert weights.parent == run_dir / "export" and weights.stat().st_size > 10_000
    from rayssl.models.weights_file import load_export

    state, meta = load_export(str(weights))
    assert meta["method"] == "mae" and meta["roi"] == [32, 32, 32] and state


def test_submitted_tiny_sweep_finishes(head):
    if not (ROOT / "jobs" / "tune.py").exists():
        pytest.skip("jobs/tune.py is not in this checkout yet: no sweep to submit")
    # the tiny sweep, trimmed: no from-scratch baseline, 1 pre-training and 2 fine-tuning epochs per trial
    status, logs = submit(head, "python", "jobs/tune.py", "--task", "tiny", "num_samples=2", "baseline=false",
                          "pretrain.epochs=1", "finetune.epochs=2", timeout=600)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "Started a local Ray instance" not in logs
    sweep_dir = Path(logs.strip().splitlines()[-1])
    assert sweep_dir.is_dir(), f"last line of the sweep log is not its directory: {sweep_dir}"
    assert list(sweep_dir.rglob("leaderboard*.csv")), f"no leaderboard in {sweep_dir}"
