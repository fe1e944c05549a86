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

from conftest import read_metrics

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
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [5, 10]
    assert all(r["val_metric"] == r["val_dice"] for r in rows)
    best = max(rows, key=lambda r: r["val_metric"])
    assert rows[-1]["best_val_metric"] == best["val_metric"] and rows[-1]["best_epoch"] == best["epoch"]
    assert (run_dir / "best.safetensors").is_file()


def test_predictions_lie_on_each_case_grid_and_scores_match_the_label_files(runs):
    from rayssl.data.sources import Case

    _, cfg, run_dir = runs
    test_cases = {c["case_id"]: Case(**c) for c in json.loads((run_dir / "plan_cases.json").read_text())["test"]}
    with (run_dir / "cases_test.csv").open() as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(test_cases) and len(rows) == 2
    assert {"dice_liver", "hd95_liver", "mean_dice", "mean_hd95"} <= set(next(iter(rows.values())))
    for case_id, case in test_cases.items():
        source, truth = nib.load(case.image[0]), np.asarray(nib.load(case.label).dataobj)
        img = nib.load(str(run_dir / "predictions" / f"{case_id}.nii.gz"))
        assert img.shape == source.shape and np.allclose(img.affine, source.affine, atol=1e-6)  # the file's grid
        pred = np.asarray(img.dataobj)
        assert set(np.unique(pred)) <= set(range(8)) and (pred > 0).any()
        liver = 2 * ((pred == 1) & (truth == 1)).sum() / ((pred == 1).sum() + (truth == 1).sum())
        assert float(rows[case_id]["dice_liver"]) == pytest.approx(liver, abs=1e-6)  # scored on that grid
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
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [5, 10, 12]  # trained epochs 11-12 only
    assert rows[-1]["resumes"] == 1 and rows[-1]["step"] == 12 * rows[0]["step"] // 5
    assert rows[-1]["best_val_metric"] >= before["best_val_metric"]
    after = json.loads((run_dir / "result.json").read_text())
    assert after["epochs"] == 12 and after["best_val_metric"] == rows[-1]["best_val_metric"]


# ------------------------------------------------------------------------------------------------ predict


@pytest.fixture(scope="module")
def to_predict(runs, tmp_path_factory):
    """The run's test cases as a CSV source without labels, plus one garbage file."""
    _, _, run_dir = runs
    tmp = tmp_path_factory.mktemp("predict")
    cases = json.loads((run_dir / "plan_cases.json").read_text())["test"]
    data = tmp / "in"
    data.mkdir()
    for c in cases:  # the files inside the CSV's folder (paths may not leave it)
        (data / Path(c["image"][0]).name).write_bytes(Path(c["image"][0]).read_bytes())
    (data / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    rows = ["image"] + [Path(c["image"][0]).name for c in cases] + ["broken.nii.gz"]
    (data / "cases.csv").write_text("\n".join(rows) + "\n")
    return tmp, f"csv:{data / 'cases.csv'}", cases


def predict_cfg(models, spec, out, *overrides):
    from rayssl.config import PredictConfig, load_config

    cfg = load_config(PredictConfig, "predict", overrides=list(overrides))
    cfg.model, cfg.input, cfg.out = [str(m) for m in models], spec, str(out)
    return cfg


def test_predict_writes_each_case_on_its_grid_and_matches_the_evaluation(runs, to_predict):
    from rayssl.predict.driver import predict

    _, _, run_dir = runs
    tmp, spec, cases = to_predict
    out = Path(predict(predict_cfg([run_dir], spec, tmp / "out", "save_probabilities=true")))
    result = json.loads((run_dir / "result.json").read_text())
    dice = []
    for c in cases:
        source = nib.load(c["image"][0])
        img = nib.load(str(out / f"{c['case_id']}.nii.gz"))
        assert img.shape == source.shape and np.allclose(img.affine, source.affine, atol=1e-6)
        assert np.array_equal(img.header.get_zooms(), source.header.get_zooms())
        probs = nib.load(str(out / f"{c['case_id']}_prob.nii.gz"))
        assert probs.shape == (*source.shape, 8) and np.allclose(np.asarray(probs.dataobj).sum(-1), 1, atol=1e-4)
        pred, truth = np.asarray(img.dataobj), np.asarray(nib.load(c["label"]).dataobj)
        organs = [2 * ((pred == k) & (truth == k)).sum() / ((pred == k).sum() + (truth == k).sum())
                  for k in range(1, 8) if (pred == k).any() or (truth == k).any()]
        dice.append(np.mean(organs))
    assert np.mean(dice) == pytest.approx(result["test"]["mean_dice"], abs=0.01)  # what fine-tuning reported
    with (out / "cases.csv").open() as f:
        rows = {r["case_id"] or r["input"]: r for r in csv.DictReader(f)}
    assert {r["status"] for r in rows.values()} == {"done", "quarantined"}
    bad = next(r for r in rows.values() if r["status"] == "quarantined")
    assert "broken.nii.gz" in bad["reason"] and "gzip" in bad["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted"] == 2 and summary["quarantined"] == 1 and summary["versions"]["torch"]

    written = {c["case_id"]: (out / f"{c['case_id']}.nii.gz").stat().st_mtime_ns for c in cases}
    predict(predict_cfg([run_dir], spec, tmp / "out"))  # resume: nothing left to do
    assert {k: (out / f"{k}.nii.gz").stat().st_mtime_ns for k in written} == written
    assert json.loads((out / "summary.json").read_text())["skipped_done_before"] == 2


def test_an_ensemble_averages_its_models_probabilities(runs, to_predict):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from rayssl.config import dump_config
    from rayssl.predict.driver import Predictor, plan_predict

    _, _, run_dir = runs
    tmp, spec, cases = to_predict
    other = tmp / "other-run"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("checkpoint_*"))
    weights = load_file(str(other / "best.safetensors"))
    gen = torch.Generator().manual_seed(0)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=gen) * v.std() if v.is_floating_point() and v.numel() > 1
               else v for k, v in weights.items()}, str(other / "best.safetensors"))
    c = cases[0]["case_id"]
    probs = {}
    for name, models in (("a", [run_dir]), ("b", [other]), ("ab", [run_dir, other])):
        # the predict job's actor, in this process: one case is enough to compare probabilities
        cfg = predict_cfg(models, spec, tmp / f"ens-{name}", "save_probabilities=true")
        plan = plan_predict(cfg)
        row = Predictor(plan.models, dump_config(cfg), dump_config(plan.data), str(plan.out)).one(
            next(case for case in plan.todo if case.case_id == c))
        assert row["status"] == "done"
        probs[name] = np.asarray(nib.load(str(plan.out / f"{c}_prob.nii.gz")).dataobj)
    assert not np.allclose(probs["a"], probs["b"], atol=1e-3)  # two different models
    np.testing.assert_allclose(probs["ab"], (probs["a"] + probs["b"]) / 2, atol=2e-5)


def test_predict_rejects_models_that_disagree_before_ray(runs, tmp_path):
    import shutil

    from rayssl.predict.driver import plan_predict

    _, _, run_dir = runs
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("checkpoint_*"))
    record = json.loads((other / "result.json").read_text())
    record["task"]["class_names"] = record["task"]["class_names"][::-1]
    (other / "result.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="must agree:\n  labels"):
        plan_predict(predict_cfg([run_dir, other], "synthetic:ct:2", tmp_path / "out"))
    with pytest.raises(ValueError, match="no best.safetensors"):
        plan_predict(predict_cfg([tmp_path], "synthetic:ct:2", tmp_path / "out"))


def test_cross_validation_runs_every_fold_and_summarises(runs, tmp_path):
    import statistics

    from rayssl.finetune.driver import finetune

    _, cfg, _ = runs
    cv = cfg.model_copy(deep=True)
    cv.data.folds, cv.data.val_fold, cv.data.test_fold = 2, "all", None
    cv.pretrained, cv.epochs, cv.eval.val_every, cv.eval.hd95 = "none", 1, 1, False
    cv.run.name, cv.run.storage_path = "cv", str(tmp_path)
    out = Path(finetune(cv))
    summary = json.loads((out / "cv_summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1] and out == tmp_path / "cv"
    vals = [json.loads((tmp_path / f"cv-fold{k}" / "result.json").read_text())["val"]["mean_dice"] for k in (0, 1)]
    assert [f["val"] for f in summary["folds"]] == pytest.approx(vals)
    assert summary["val_mean"] == pytest.approx(statistics.mean(vals)) and summary["val_sd"] == pytest.approx(statistics.stdev(vals))
    assert summary["models"] == ",".join(str(tmp_path / f"cv-fold{k}") for k in (0, 1))
    assert "jobs/predict.py --model" in (out / "cv_summary.md").read_text()
