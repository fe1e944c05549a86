"""Leaderboards on hand-made sweep directories: ranking, status, baseline row, best marking, merge, overview, job."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rayssl.tune.leaderboard import load_sweep, merge_leaderboards, rank_rows, write_leaderboard

SEARCHED = ["mask_ratio", "layer_decay", "lr"]


def make_sweep(root: Path, task: str, trials: dict, baseline: tuple | None, metric: str = "mean_dice") -> Path:
    """``trials``: id -> (params, [(epoch, val), ...], test or None (stopped early), pre-training reused)."""
    root.mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({
        "task": task, "metric": "val_metric", "mode": "max", "searched": SEARCHED,
        "defaults": {"mask_ratio": 0.75, "layer_decay": 0.75, "lr": 2e-3}}))
    for tid, (params, reports, test, reused) in trials.items():
        d = root / tid
        d.mkdir()
        (d / "params.json").write_text(json.dumps(params))
        (d / "result.json").write_text("".join(
            json.dumps({"val_metric": v, "epoch": e, "time_total_s": 10.0 * e,
                        "checkpoint_path": f"{d}/finetune/checkpoint_{e}"}) + "\n" for e, v in reports))
        (d / "trial.json").write_text(json.dumps({"trial_id": tid, "pretrain": {"reused": reused},
                                                  **({"wall_time_s": 99.0} if test is not None else {})}))
        if test is not None:
            (d / "finetune").mkdir()
            (d / "finetune" / "result.json").write_text(json.dumps({
                "metric": metric, "val": {metric: max(v for _, v in reports)}, "test": {metric: test},
                "best_val_metric": max(v for _, v in reports), "epochs": reports[-1][0], "wall_time_s": 50.0}))
    if baseline:
        (root / "baseline").mkdir()
        (root / "baseline" / "result.json").write_text(json.dumps({
            "metric": metric, "val": {metric: baseline[0]}, "test": {metric: baseline[1]},
            "best_val_metric": baseline[0], "epochs": 4, "wall_time_s": 40.0}))
    (root / "tuner.pkl").write_bytes(b"")  # Tune's own files are ignored
    (root / "pretrain_store").mkdir()
    return root


@pytest.fixture
def sweep_a(tmp_path):
    return make_sweep(tmp_path / "a", "seg", {
        "t1": ({"mask_ratio": 0.6, "layer_decay": 0.7, "lr": 1e-3}, [(1, 0.30), (2, 0.41), (3, 0.52), (4, 0.50)], 0.49, False),
        "t2": ({"mask_ratio": 0.8, "layer_decay": 0.9, "lr": 3e-3}, [(1, 0.10)], None, True),  # stopped by ASHA
        "t3": ({"mask_ratio": 0.7, "layer_decay": 0.6, "lr": 5e-4}, [(1, 0.35), (2, 0.44), (3, 0.45), (4, 0.47)], 0.46, False),
    }, baseline=(0.40, 0.38))


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_rank_rows_orders_by_val_missing_last_ties_by_id():
    rows = [{"trial_id": "b", "val_metric": 0.5}, {"trial_id": "a", "val_metric": None},
            {"trial_id": "c", "val_metric": 0.5}, {"trial_id": "d", "val_metric": 0.9}]
    assert [(r["rank"], r["trial_id"]) for r in rank_rows(rows)] == [(1, "d"), (2, "b"), (3, "c"), (4, "a")]


def test_leaderboard_rows_ranked_with_baseline_and_best_marked(sweep_a):
    overview = write_leaderboard(sweep_a)
    rows = read_csv(sweep_a / "leaderboard.csv")
    assert [r["trial_id"] for r in rows] == ["t1", "t3", "t2", "scratch"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "ref"]
    t1, t3, t2, ref = rows
    assert list(rows[0])[:5] == ["rank", "trial_id", "mask_ratio", "layer_decay", "lr"]
    assert (float(t1["val_metric"]), float(t1["test_metric"]), t1["epochs"], t1["status"]) == (0.52, 0.49, "4", "completed")
    assert t1["best"] == "True" and t3["best"] == "False" and t1["pretrain"] == "trained"
    assert t1["checkpoint"] == str(sweep_a / "t1" / "finetune" / "best.safetensors") and t1["wall_time_s"] == "99.0"
    assert (t2["status"], t2["test_metric"], t2["epochs"], t2["pretrain"]) == ("stopped", "", "1", "reused")
    assert t2["checkpoint"].endswith("t2/finetune/checkpoint_1") and float(t2["wall_time_s"]) == 10.0
    assert (ref["mask_ratio"], float(ref["layer_decay"]), float(ref["test_metric"]), ref["status"]) == ("", 0.75, 0.38, "baseline")
    assert overview["best_trial"] == "t1" and overview["gain_over_scratch"] == pytest.approx(0.11)
    assert overview["trials"] == 3 and overview["stopped_early"] == 1
    md = (sweep_a / "leaderboard.md").read_text()
    assert "**Best configuration** (trial t1): mask_ratio=0.6, layer_decay=0.7, lr=0.001" in md
    assert "**test mean_dice = 0.49**" in md and "**0.49 ← best config's test**" in md
    assert "| ref (scratch) |" in md and "1 stopped early by ASHA" in md and "gain on test +0.11" in md
    assert (sweep_a / "leaderboard.png").stat().st_size > 5000


def test_merge_pools_sweeps_of_a_task_and_writes_overview(sweep_a, tmp_path):
    sweep_b = make_sweep(tmp_path / "b", "seg", {
        "u1": ({"mask_ratio": 0.9, "layer_decay": 0.8, "lr": 2e-3}, [(1, 0.4), (2, 0.6)], 0.58, True)}, baseline=(0.41, 0.37))
    sweep_c = make_sweep(tmp_path / "c", "cls", {
        "v1": ({"mask_ratio": 0.75, "layer_decay": 0.75, "lr": 1e-3}, [(5, 0.70)], 0.69, False)},
        baseline=None, metric="mean_auc")
    path = merge_leaderboards([sweep_a, sweep_b, sweep_c], tmp_path / "out")
    seg = read_csv(tmp_path / "out" / "seg" / "leaderboard.csv")
    assert [r["trial_id"] for r in seg] == ["b/u1", "a/t1", "a/t3", "a/t2", "scratch"]
    assert float(seg[-1]["test_metric"]) == 0.37  # the baseline of the sweep holding the best trial
    assert (sweep_c / "leaderboard.csv").is_file()  # a task with one sweep: rebuilt in its directory
    overview = read_csv(tmp_path / "out" / "overview.csv")
    assert [(o["task"], o["metric"], o["best_trial"]) for o in overview] == [("seg", "mean_dice", "b/u1"), ("cls", "mean_auc", "v1")]
    assert float(overview[0]["gain_over_scratch"]) == pytest.approx(0.21) and overview[1]["gain_over_scratch"] == ""
    assert overview[0]["best_config"] == "mask_ratio=0.9, layer_decay=0.8, lr=0.002" and overview[0]["sweeps"] == "2"
    assert "| seg | mean_dice | 0.6 | 0.58 |" in path.read_text()


def test_merge_rejects_mixed_metrics_and_non_sweep_dirs(sweep_a, tmp_path):
    other = make_sweep(tmp_path / "x", "seg", {"w": ({"mask_ratio": 0.6}, [(1, 0.5)], 0.5, False)}, None, metric="mean_auc")
    with pytest.raises(ValueError, match="task 'seg': sweeps report different metrics"):
        merge_leaderboards([sweep_a, other], tmp_path / "out")
    with pytest.raises(ValueError, match="is not a sweep directory"):
        load_sweep(tmp_path)


def test_leaderboard_job_rebuilds_and_prints_overview_last(sweep_a, tmp_path):
    (sweep_a / "leaderboard.csv").unlink(missing_ok=True)
    job = Path(__file__).resolve().parents[1] / "jobs" / "leaderboard.py"
    out = subprocess.run([sys.executable, str(job), str(sweep_a)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == str(sweep_a / "overview.md")
    assert read_csv(sweep_a / "leaderboard.csv")[0]["trial_id"] == "t1"
    bad = subprocess.run([sys.executable, str(job), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not a sweep directory" in bad.stderr
