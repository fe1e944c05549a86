"""benchmarks/gpu_step.py runs on a bare machine (torch, timm, MONAI, numpy and rayssl's model code only)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_step.py"
BARE = """
import runpy, sys
class Forbid:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "deepspeed", "pydantic", "yaml", "optuna"):
            raise ImportError(f"{name} is not installed on a bare GPU machine")
sys.meta_path.insert(0, Forbid())
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_gpu_step_runs_every_case_without_ray_deepspeed_or_pydantic(tmp_path):
    out = tmp_path / "gpu_step.json"
    proc = subprocess.run([sys.executable, "-c", BARE, str(SCRIPT), "--tiny", "--steps", "1", "--warmup", "1",
                           "--batches", "1,2", "--sw-batches", "1,2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(out.read_text())
    rows = {r["case"]: r for r in info["rows"]}
    assert set(rows) == {"mae3d", "mae2d", "unetr", "sliding_window", "genesis", "cnn_mae"} and info["tiny"]
    swept = lambda case, key: sorted(r[key] for r in info["rows"] if r["case"] == case)  # noqa: E731
    assert swept("mae3d", "batch") == swept("unetr", "batch") == [1, 2] and swept("sliding_window", "sw_batch") == [1, 2]
    for case in ("mae3d", "mae2d", "unetr", "cnn_mae"):  # FLOPs counted, so MFU is defined
        assert rows[case]["samples_per_s"] > 0 and rows[case]["tflop_per_step"] > 0 and 0 < rows[case]["mfu"] < 1
    assert rows["sliding_window"]["volumes_per_s"] > 0 and rows["genesis"]["samples_per_s"] > 0
    assert "SDPA" in info["attention"]


def test_gpu_step_measures_rayssls_own_deepspeed_step(tmp_path):
    """``--deepspeed``: the 3D MAE through rayssl's engine (its DeepSpeed config, groups and optimiser), ZeRO 0 and 2."""
    out = tmp_path / "gpu_step.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--only", "genesis", "--steps", "2", "--warmup", "1",
                           "--deepspeed", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_PORT": "29561"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    for zero in (0, 2):
        row = rows[f"mae3d_ds_zero{zero}"]
        assert row["precision"] == "fp32" and row["samples_per_s"] > 0 and 0 < row["mfu"] < 1
