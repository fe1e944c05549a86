"""Autoscaling and node failure on Ray's fake multi-node autoscaler (``RAY_FAKE_CLUSTER``), in a cluster of
its own: a CPU head (1 CPU), worker nodes of 3 CPUs added on demand, and a GPU node type at
zero nodes. A 2-worker pre-training run (2 CPUs per worker: one worker per node) makes the autoscaler add
nodes; one node is killed mid-training; the run resumes from its last checkpoint and finishes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

from conftest import read_metrics
from test_cluster_submit import ROOT, LocalHead

MAX_STEPS, CHECKPOINT_EVERY, LOG_EVERY = 8, 2, 1


def fake_cluster_config(gcs_address: str) -> dict:
    node = {"node_config": {}, "min_workers": 0}
    return {
        "cluster_name": "rayssl-fake",
        "max_workers": 4,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            # 3 CPUs: one training worker (2 CPUs) plus one CPU for Ray Data. max 3: two for the run plus the
            # replacement of a lost node
            "cpu_3": {**node, "resources": {"CPU": 3, "object_store_memory": 200_000_000}, "max_workers": 3},
            # never launched here (the run sets scale.use_gpu=false); lets use_gpu=None see GPUs it could add
            "gpu_1": {**node, "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 150_000_000}, "max_workers": 1},
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


def _env_of(p: psutil.Process) -> dict:
    try:
        return p.environ()
    except (psutil.Error, OSError):
        return {}


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except (psutil.Error, OSError):
        return ""


def worker_nodes(head: LocalHead) -> dict[str, list[psutil.Process]]:
    """Live fake worker nodes of ``head``'s cluster: node id -> its processes (raylet, workers, agents)."""
    nodes: dict[str, list[psutil.Process]] = {}
    for p in head.processes():
        node_id = _env_of(p).get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
        if node_id and node_id != FAKE_HEAD_NODE_ID:
            nodes.setdefault(node_id, []).append(p)
    return {n: ps for n, ps in nodes.items() if any(_cmdline(p).split(" ")[0].endswith("raylet") for p in ps)}


def checkpoint_steps(run_dir: Path) -> list[int]:
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return [c["metrics"]["step"] for c in snapshot["checkpoint_results"]]
    except (OSError, ValueError, KeyError):
        return []


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """Run the whole scenario once; the tests below check its record."""
    tmp = tmp_path_factory.mktemp("autoscaling")
    head = LocalHead(num_cpus=1, dashboard=False, env={"AUTOSCALER_HEARTBEAT_TIMEOUT_S": "5"})
    head.autoscaling_config = fake_cluster_config(head.gcs_address)
    head.start()
    record: dict = {"tmp": tmp}
    try:
        env = {**head.env, "RAY_ADDRESS": head.gcs_address, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
        probe = subprocess.run(
            [sys.executable, "-c",
             "import json; from rayssl.train.launch import autoscaler_max_gpus, init_ray, use_gpu; init_ray(); "
             "from rayssl.config import PretrainConfig, load_config; "
             "cfg = load_config(PretrainConfig, 'pretrain', preset='tiny'); "
             "print(json.dumps({'use_gpu': use_gpu(cfg.scale), 'max_gpus': autoscaler_max_gpus()}))"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )
        record["gpu_probe"] = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else probe.stderr[-3000:]
        record["nodes_before"] = len(worker_nodes(head))

        run_dir = tmp / "runs" / "elastic"
        cmd = [
            sys.executable, "jobs/pretrain.py", "data.source=synthetic:ct:4", f"data.synthetic_dir={tmp / 'synthetic'}",
            "data.folds=2", "data.test_fold=null",  # 2 training cases: one per worker
            "data.roi=[32,32,32]", "data.patches_per_volume=16", "batch_size=4", f"max_steps={MAX_STEPS}",
            f"run.checkpoint_every={CHECKPOINT_EVERY}", f"run.log_every={LOG_EVERY}", "run.preview_every=0",
            "run.max_failures=3", "scale.num_workers=2", "scale.cpus_per_worker=2", "scale.use_gpu=false",
            f"run.storage_path={tmp / 'runs'}", "run.name=elastic",
        ]
        log = open(tmp / "driver.log", "w")
        driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        record["max_nodes"] = 0
        deadline = time.time() + 420
        def past_checkpoint() -> bool:  # a step after the first checkpoint: the kill then loses work
            done = checkpoint_steps(run_dir)
            try:
                return bool(done) and read_metrics(run_dir)[-1]["step"] > done[0]
            except (OSError, ValueError, IndexError):  # not written yet / a line being written
                return False

        while not past_checkpoint() and driver.poll() is None and time.time() < deadline:
            record["max_nodes"] = max(record["max_nodes"], len(worker_nodes(head)))
            time.sleep(0.5)
        nodes = worker_nodes(head)
        record["max_nodes"] = max(record["max_nodes"], len(nodes))
        # kill the node that hosts a training worker: every process of that node, at once
        victim = next((n for n, ps in nodes.items() if any("RayTrainWorker" in _cmdline(p) for p in ps)), None)
        record["victim"] = victim
        if victim:
            procs = nodes[victim]
            record["killed"] = sorted({(_cmdline(p).split(" ")[0].rsplit("/", 1)[-1] or p.name()) for p in procs})
            for p in procs:
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            record["killed_at"] = time.time()
        while driver.poll() is None and time.time() < deadline:
            record["max_nodes"] = max(record["max_nodes"], len(worker_nodes(head)))
            time.sleep(0.5)
        if driver.poll() is None:
            driver.kill()
        driver.wait()
        log.close()
        record.update(returncode=driver.returncode, log=(tmp / "driver.log").read_text(), run_dir=run_dir)
        yield record
    finally:
        head.stop()
        assert head.processes() == []


def test_gpu_node_types_at_zero_make_use_gpu_request_gpus(scenario):
    # no GPU node is up, the autoscaler can add one: use_gpu=None must not fall back to CPU
    assert scenario["gpu_probe"] == {"use_gpu": True, "max_gpus": 1.0}


def test_autoscaler_adds_nodes_and_the_run_finishes(scenario):
    assert scenario["returncode"] == 0, scenario["log"][-4000:]
    assert scenario["nodes_before"] == 0
    assert scenario["max_nodes"] >= 2  # one node per training worker
    rows = read_metrics(scenario["run_dir"])
    assert {r["world_size"] for r in rows} == {2}
    lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line).strip() for line in scenario["log"].splitlines()]
    assert str(scenario["run_dir"]) in lines  # the job's result line


def test_killed_node_recovers_from_last_checkpoint(scenario):
    assert scenario["victim"], "no node hosted a training worker"
    run_dir = scenario["run_dir"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == MAX_STEPS and result["resumes"] >= 1
    rows = read_metrics(run_dir)
    killed_at = scenario["killed_at"]
    before = [r for r in rows if r["time"] <= killed_at]
    after = [r for r in rows if r["time"] > killed_at]
    assert before and after
    reached = max(r["step"] for r in before)
    resumed_from = after[0]["step"] - LOG_EVERY
    lost = reached - resumed_from
    # at most the steps since the last checkpoint are lost, and steps run on to the end in order
    assert 0 <= lost <= CHECKPOINT_EVERY and resumed_from % CHECKPOINT_EVERY == 0
    assert [r["step"] for r in after] == list(range(resumed_from + LOG_EVERY, MAX_STEPS + 1, LOG_EVERY))
    print(
        f"killed node {scenario['victim'][-5:]} ({', '.join(scenario['killed'])}) at step {reached}; "
        f"resumed from checkpoint step {resumed_from} (lost {lost} steps); first metrics "
        f"{after[0]['time'] - killed_at:.1f} s after the kill; run finished at step {result['steps']}"
    )
