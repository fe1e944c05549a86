"""End to end on Ray: tiny MAE pre-training -> UNETR fine-tuning on synthetic CT -> evaluation files."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rayssl.config import FinetuneConfig, PretrainConfig, load_config

SPLIT = ["data.folds=4", "data.val_fold=0", "data.test_fold=1"]


@pytest.fixture(scope="module")
def runs(ray_session, tmp_path_factory):
    from rayssl.finetune.driver import finetune
    from rayssl.pretrain.driver import pretrain

    tmp = tmp_path_factory.mktemp("ft")
    common = ["data.source=synthetic:ct:8", f"data.synthetic_dir={tmp / 'synthetic'}", "data.roi=[32,32,32]",
              *SPLIT, f"run.storage_path={tmp}", "scale.cpus_per_worker=0.5"]
    pre = pretrain(load_config(PretrainConfig, "pretrain", "tiny", overrides=[
        *common, "run.name=tiny-mae-pre", "epochs=4", "batch_size=4"]))
    cfg = load_config(FinetuneConfig, "finetune", "tiny", overrides=[
        *common, f"pretrained={tmp}/tiny-mae-*", "run.name=ft", "epochs=10", "eval.val_every=5",
        "model.feature_size=16", "optim.lr=3e-3"])
    return Path(pre), cfg, Path(finetune(cfg))


def chance_dice(labels: list[np.ndarray], num_classes: int) -> float:
    """Expected mean organ Dice of a predictor drawing each voxel's class uniformly at random."""
    scores = []
    for lab in labels:
        for k in range(1, num_classes):
            f = float((lab == k).mean())
            if f > 0:
                scores.append(2 * f / num_classes / (f + 1 / num_classes))
    return float(np.mean(scores))


def test_finetuned_dice_far_above_chance(runs):
    from rayssl.data.preprocess import load_case
    from rayssl.data.sources import Case

    pre, cfg, run_dir = runs
    result = json.loads((run_dir / "result.json").read_text())
    assert result["task"]["mode"] == "multiclass" and result["task"]["num_classes"] == 8
    assert result["pretrained"]["source"] == str((pre / "export" / "encoder.safetensors").resolve())
    assert result["pretrained"]["loaded"] == 54 and result["pretrained"]["pos_embed_interpolated"] is None
    cases = [Case(**c) for c in json.loads((run_dir / "plan_cases.json").read_text())["test"]]
    labels = [load_case(c, "ct_btcv", cfg.data.spacing)["label"] for c in cases]
    chance = chance_dice(labels, 8)
    test = result["test"]
    assert chance < 0.05 and test["mean_dice"] > 3 * chance, (test, chance)
    assert test["dice_liver"] > 0.2 and test["mean_hd95"] > 0  # mm, from the volume spacing
    assert result["val"]["mean_dice"] == pytest.approx(result["best_val_metric"], abs=1e-6)


def test_validation_reported_and_best_kept(runs):
    _, _, run_dir = runs
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [5, 10]
    assert all(r["val_metric"] == r["val_dice"] for r in rows)
    best = max(rows, key=lambda r: r["val_metric"])
    assert rows[-1]["best_val_metric"] == best["val_metric"] and rows[-1]["best_epoch"] == best["epoch"]
    assert (run_dir / "best.safetensors").is_file()


def test_per_case_csv_nifti_with_input_affine_and_overlays(runs):
    from rayssl.data.preprocess import load_case
    from rayssl.data.sources import Case

    _, cfg, run_dir = runs
    test_cases = {c["case_id"]: Case(**c) for c in json.loads((run_dir / "plan_cases.json").read_text())["test"]}
    with (run_dir / "cases_test.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["case_id"] for r in rows} == set(test_cases) and len(rows) == 2
    assert {"dice_liver", "hd95_liver", "mean_dice", "mean_hd95"} <= set(rows[0])
    for case_id, case in test_cases.items():
        vol = load_case(case, "ct_btcv", cfg.data.spacing)  # the grid the run predicted on
        img = nib.load(str(run_dir / "predictions" / f"{case_id}.nii.gz"))
        assert img.shape == vol["label"].shape
        assert np.allclose(img.affine, vol["affine"], atol=1e-4)
        pred = np.asarray(img.dataobj)
        assert set(np.unique(pred)) <= set(range(8)) and (pred > 0).any()
        assert (run_dir / "overlays" / f"{case_id}.png").stat().st_size > 2000


def test_mismatched_pretrained_fails_before_training(runs, tmp_path):
    from rayssl.finetune.driver import plan_finetune

    pre, cfg, _ = runs
    bad = cfg.model_copy(update={"pretrained": str(pre), "model": cfg.model.model_copy(update={"patch_size": 16})})
    with pytest.raises(ValueError, match="patch_size: checkpoint 8, model 16"):
        plan_finetune(bad)


def test_job_rejects_bad_config_before_ray():
    job = Path(__file__).resolve().parents[1] / "jobs" / "finetune.py"
    out = subprocess.run([sys.executable, str(job), "model.arch=vnet"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "model.arch" in out.stderr


def test_rerun_with_same_name_resumes_from_last_checkpoint(runs):
    # keep this test last in the module: it extends the shared run
    from rayssl.finetune.driver import finetune

    _, cfg, run_dir = runs
    before = json.loads((run_dir / "result.json").read_text())
    longer = cfg.model_copy(update={"epochs": 12})
    assert Path(finetune(longer)) == run_dir
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [5, 10, 12]  # trained epochs 11-12 only
    assert rows[-1]["resumes"] == 1 and rows[-1]["step"] == 12 * rows[0]["step"] // 5
    assert rows[-1]["best_val_metric"] >= before["best_val_metric"]
    after = json.loads((run_dir / "result.json").read_text())
    assert after["epochs"] == 12 and after["best_val_metric"] == rows[-1]["best_val_metric"]
