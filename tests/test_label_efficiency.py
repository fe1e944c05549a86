"""benchmarks/label_efficiency.py: its arguments, recipes and summary (the runs themselves are the benchmark)."""

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("label_efficiency", Path(__file__).parents[1] / "benchmarks/label_efficiency.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_arguments_and_their_errors():
    args = bench.parse_args(["--source", "synthetic:mri:8", "--methods", "genesis, mae", "--labelled", "4,1,2,1"])
    assert args.methods == ["genesis", "mae"] and args.labelled == [1, 2, 4] and args.seeds == 3
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "simclr"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--labelled", "0,2"])
    assert bench.parse_args([]).layer_decay is None and bench.parse_args(["--layer-decay", "0.001"]).layer_decay == 0.001
    with pytest.raises(SystemExit):
        bench.parse_args(["--layer-decay", "0"])


def test_layer_decay_reaches_the_unetr_arms_only():
    from rayssl.config import FinetuneConfig, load_config

    def model(method, decay):
        return load_config(FinetuneConfig, "finetune", "tiny", overrides=bench.model_overrides(method, decay)).model

    preset = load_config(FinetuneConfig, "finetune", "tiny").model.layer_decay
    assert model("mae", None).arch == "unetr" and model("mae", None).layer_decay == preset
    assert model("mae", 0.001).layer_decay == 0.001
    assert model("genesis", 0.001).arch == "genesis_unet" and model("genesis", 0.001).layer_decay == preset
    assert (model("cnn_mae", None).arch, model("cnn_mae", None).size) == ("resenc_unet", "tiny")  # the pre-trained U-Net


def test_genesis_arms_get_the_unit_range_form_of_the_recipe(tmp_path):
    from rayssl.data.synthetic import make_mri_phantoms

    root = make_mri_phantoms(tmp_path / "mri", n=2, seed=0, shape=(16, 16, 16))
    assert bench.recipes(f"msd:{root}", None) == {"mae": "mri_brats", "genesis": "mri_genesis", "cnn_mae": "mri_brats"}
    assert bench.recipes(f"msd:{root}", "mri_genesis") == {"mae": "mri_genesis", "genesis": "mri_genesis", "cnn_mae": "mri_genesis"}
    assert bench.recipes("synthetic:ct:2", "ct_btcv") == {"mae": "ct_btcv", "genesis": "ct_btcv", "cnn_mae": "ct_btcv"}
    with pytest.raises(ValueError, match="no Models Genesis form"):
        bench.recipes("synthetic:ct:2", "none")


def test_too_many_labelled_cases_is_an_error_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--labelled 9 but source .* has 4 training cases"):
        bench.main(["--source", "synthetic:ct:8", "--labelled", "1,9", "--out", str(tmp_path / "le")])
    assert not (tmp_path / "le").exists()


def test_summary_gains_per_seed_by_hand():
    rows = []
    for seed, (pre, scr) in enumerate([(0.6, 0.5), (0.7, 0.4), (0.5, 0.5)]):
        rows += [{"method": "mae", "arm": "pretrained", "labelled": 1, "seed": seed, "test_dice": pre},
                 {"method": "mae", "arm": "scratch", "labelled": 1, "seed": seed, "test_dice": scr}]
    (s,) = bench.summarise(rows)
    assert s["method"] == "mae" and s["labelled"] == 1
    assert s["pretrained_mean"] == pytest.approx(0.6) and s["scratch_mean"] == pytest.approx(1.4 / 3)
    assert s["gain_per_seed"] == pytest.approx([0.1, 0.3, 0.0]) and s["gain_mean"] == pytest.approx(0.4 / 3)
    assert s["gain_std"] == pytest.approx(0.152752523, rel=1e-6)


def test_settings_guard_refuses_to_mix_runs(tmp_path):
    out = tmp_path / "le"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"seeds": 99}))
    with pytest.raises(SystemExit, match="holds runs made with other settings"):
        bench.main(["--out", str(out)])


def test_mae_methods_name_their_mask_ratio():
    args = bench.parse_args(["--methods", "mae,mae@0.75,genesis,cnn_mae"])
    assert [bench.mask_of(m) for m in args.methods] == [0.125, 0.75, None, None]  # mae: SelfMedMAE's run scripts
    assert [bench.family(m) for m in args.methods] == ["mae", "mae", "genesis", "cnn_mae"]
    assert bench.model_overrides("mae@0.75", None) == ["model.arch=unetr"]
    for bad in ("mae@1.5", "mae@x", "mae@0"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--methods", bad])


def test_summary_names_the_strongest_scratch_arm_and_the_gain_against_it():
    rows = []
    for method, pre, scr in (("mae", 0.55, 0.50), ("genesis", 0.62, 0.60)):
        for seed in range(2):
            rows += [{"method": method, "arm": "pretrained", "labelled": 1, "seed": seed, "test_dice": pre},
                     {"method": method, "arm": "scratch", "labelled": 1, "seed": seed, "test_dice": scr,
                      "val_flat": method == "genesis" and seed == 1}]
    mae, genesis = bench.summarise(rows)
    assert mae["strongest_scratch"] == genesis["strongest_scratch"] == {"method": "genesis", "test_dice": pytest.approx(0.60)}
    assert mae["gain_mean"] == pytest.approx(0.05) and mae["gain_vs_strongest"] == pytest.approx(-0.05)  # beats its twin only
    assert genesis["gain_vs_strongest"] == pytest.approx(0.02) and (mae["flat_runs"], genesis["flat_runs"]) == (0, 1)


def test_a_run_whose_validation_never_moves_is_flagged(tmp_path):
    lines = lambda *vals: "\n".join(json.dumps({"step": i, **({"val_metric": v} if v is not None else {})})  # noqa: E731
                                    for i, v in enumerate(vals))
    (tmp_path / "flat.jsonl").write_text(lines(None, 0.5108, None, 0.5108))
    (tmp_path / "moving.jsonl").write_text(lines(0.31, 0.5108))
    (tmp_path / "once.jsonl").write_text(lines(None, 0.5))
    assert bench.val_flat(tmp_path / "flat.jsonl") and not bench.val_flat(tmp_path / "moving.jsonl")
    assert not bench.val_flat(tmp_path / "once.jsonl")
    assert [r["val_metric"] for r in bench.validations(tmp_path / "flat.jsonl")] == [0.5108, 0.5108]


def test_a_pool_holding_a_test_case_is_refused(tmp_path):
    import shutil

    from rayssl.config import DataConfig, build_config
    from rayssl.data.sources import resolve_source
    from rayssl.data.synthetic import make_ct_phantoms

    root = make_ct_phantoms(tmp_path / "ct", n=8, seed=0, shape=(24, 24, 16))
    data = build_config(DataConfig, {"source": f"msd:{root}", "folds": 4, "val_fold": 0, "test_fold": 1})
    test_images = [c.image[0] for c in resolve_source(data).cases if c.split == "test"]
    test_image = test_images[0]
    pool = tmp_path / "pool"
    pool.mkdir()
    for i, f in enumerate(sorted((root / "imagesTr").iterdir())):
        if str(f) not in test_images:
            shutil.copy(f, pool / f"other_{i}.nii.gz")
    assert bench.pool_overlap(f"msd:{root}", f"folder:{pool}") == []
    shutil.copy(test_image, pool / "renamed_copy.nii.gz")  # the same content under another name
    assert bench.pool_overlap(f"msd:{root}", f"folder:{pool}") == [test_image]
    with pytest.raises(SystemExit, match="holds 1 test case"):
        bench.main(["--source", f"msd:{root}", "--pretrain-source", f"folder:{pool}", "--labelled", "1",
                    "--out", str(tmp_path / "le")])


def test_brats_like_regions_fine_tune_on_a_third_tumour_crops_and_other_tasks_keep_the_preset():
    from rayssl.config import FinetuneConfig, load_config

    def sampling(recipe):
        cfg = load_config(FinetuneConfig, "finetune", "tiny", overrides=[f"data.recipe={recipe}",
                                                                         *bench.sampling_overrides(recipe)])
        return cfg.data.sampling, cfg.data.pos_fraction

    assert sampling("mri_brats") == sampling("mri_genesis") == ("balanced", 0.33)
    assert sampling("ct_btcv") == ("classes", 0.5)  # the tiny preset's, unchanged


def test_pretrained_arms_fine_tune_at_a_scaled_lr_and_scratch_twins_at_the_presets():
    from rayssl.config import FinetuneConfig, load_config

    def lr(arm, scale):
        return load_config(FinetuneConfig, "finetune", "tiny", overrides=bench.arm_overrides(arm, scale)).optim.lr

    preset = load_config(FinetuneConfig, "finetune", "tiny").optim.lr
    assert bench.parse_args([]).pretrained_lr_scale == 1.0 and bench.arm_overrides("pretrained", 1.0) == []
    assert lr("pretrained", 0.1) == pytest.approx(preset / 10)  # nnssl's adaptation: 1e-3 with weights, 1e-2 without
    assert lr("scratch", 0.1) == preset
    with pytest.raises(SystemExit):
        bench.parse_args(["--pretrained-lr-scale", "0"])


def test_settings_written_before_an_option_was_added_still_match_its_default(tmp_path):
    argv = ["--labelled", "99"]  # past the guard, refused before any Ray work
    settings = {k: v for k, v in vars(bench.parse_args(argv)).items() if k not in ("out", "pretrained_lr_scale")}
    out = tmp_path / "le"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(SystemExit, match="--labelled 99 but"):  # the guard let the default through
        bench.main([*argv, "--out", str(out)])
    with pytest.raises(SystemExit, match="holds runs made with other settings"):
        bench.main([*argv, "--out", str(out), "--pretrained-lr-scale", "0.1"])


def test_weight_drift_by_hand(tmp_path):
    import torch
    from safetensors.torch import save_file

    pre = {"conv.weight": torch.ones(2, 2), "norm.bias": torch.ones(3), "head.weight": torch.ones(4, 1)}
    ft = {"conv.weight": torch.full((2, 2), 1.5), "norm.bias": torch.zeros(3), "head.weight": torch.ones(7, 1)}
    save_file(pre, tmp_path / "pre.safetensors")
    save_file(ft, tmp_path / "ft.safetensors")
    # conv only: |0.5 * ones(2, 2)| / |ones(2, 2)| = 0.5; the bias (1-D) and the reshaped head are left out
    assert bench.weight_drift(tmp_path / "pre.safetensors", tmp_path / "ft.safetensors") == pytest.approx(0.5)
    save_file({"vit.weight": torch.ones(2, 2)}, tmp_path / "other.safetensors")
    assert bench.weight_drift(tmp_path / "pre.safetensors", tmp_path / "other.safetensors") is None
    rows = [{"method": "genesis", "arm": arm, "labelled": 1, "seed": s, "test_dice": 0.5, "weight_drift": d}
            for arm, s, d in (("pretrained", 0, 0.2), ("pretrained", 1, 0.4), ("scratch", 0, 1.3), ("scratch", 1, 1.5))]
    (s,) = bench.summarise(rows)
    assert s["weight_drift"] == pytest.approx({"pretrained": 0.3, "scratch": 1.4})
