"""A tiny real sweep on Ray: MAE pre-training shared by a mask-ratio bucket, UNETR fine-tuning, ASHA, leaderboard."""

import csv
import json
from pathlib import Path

import pytest

from rayssl.config import SweepConfig, load_config


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    from rayssl.tune.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("sweep")
    syn = tmp / "synthetic"
    cfg = load_config(SweepConfig, "tune", "tiny", overrides=[
        "num_samples=2", "name=real", f"storage_path={tmp}", "baseline=false", "pretrain.epochs=1", "finetune.epochs=2",
        f"pretrain.data.synthetic_dir={syn}", f"finetune.data.synthetic_dir={syn}",
        # both trials fall in the 0.75 mask-ratio bucket: one pre-training for the two
        "space.mask_ratio={low: 0.74, high: 0.76, step: null}", "space.layer_decay={low: 0.6, high: 0.9}",
        "space.lr={low: 1.0e-3, high: 5.0e-3, log: true}", "space.drop_path=null"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAYSSL_SWEEP_KEY", "a test key of 32 characters ...")  # not the user's ~/.config/rayssl key
        return Path(run_sweep(cfg))


def tune_reports(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def test_trials_share_one_pretraining_per_bucket(sweep):
    entries = sorted((sweep / "pretrain_store").glob("*.json"))
    assert len(entries) == 1 and "-m0.75-" in entries[0].name
    infos = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/trial.json"))]
    assert len(infos) == 2
    assert sorted(i["pretrain"]["reused"] for i in infos) == [False, True]
    assert len({i["pretrain"]["weights"] for i in infos}) == 1
    assert all(0.74 <= i["params"]["mask_ratio"] <= 0.76 for i in infos)


def test_leaderboard_rows_match_trial_results(sweep):
    with (sweep / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and [r["rank"] for r in rows] == ["1", "2"]
    assert float(rows[0]["val_metric"]) >= float(rows[1]["val_metric"]) and rows[0]["best"] == "True"
    for row in rows:
        trial = sweep / row["trial_id"]
        reports = tune_reports(trial)
        params = json.loads((trial / "params.json").read_text())
        assert float(row["val_metric"]) == pytest.approx(max(r["val_metric"] for r in reports))
        assert [r["epoch"] for r in reports] == list(range(1, int(row["epochs"]) + 1))
        for key in ("mask_ratio", "layer_decay", "lr"):
            assert float(row[key]) == pytest.approx(params[key])
        assert "drop_path" not in row  # only searched parameters get a column
        assert "-m0.75-" in row["encoder"]
        final = trial / "finetune" / "result.json"
        if row["status"] == "completed":
            res = json.loads(final.read_text())
            assert float(row["test_metric"]) == pytest.approx(res["test"]["mean_dice"])
            assert float(row["val_metric"]) == pytest.approx(res["best_val_metric"])
            assert res["config"]["model"]["layer_decay"] == pytest.approx(params["layer_decay"])
            assert res["pretrained"]["loaded"] > 0 and Path(row["checkpoint"]).is_file()
            assert int(row["epochs"]) == 2
        else:  # stopped by ASHA at the epoch-1 rung
            assert row["status"] == "stopped" and row["test_metric"] == "" and not final.exists()
            assert int(row["epochs"]) == 1
    assert "completed" in {r["status"] for r in rows}
    md = (sweep / "leaderboard.md").read_text()
    assert f"**Best configuration** (trial {rows[0]['trial_id']})" in md
    assert (sweep / "leaderboard.png").is_file()
