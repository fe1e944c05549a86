"""Search space: ranges, log scales, clear errors, seeded TPE, trial configs, ASHA rungs and trial concurrency."""

import math

import pytest

from rayssl.config import ConfigError, PretrainConfig, SweepConfig, load_config
from rayssl.config.search_space import check_space
from rayssl.tune.space import build_search_space, default_params, trial_configs
from rayssl.tune.sweep import asha_max_t, concurrent_trials, plan_sweep


def suggestions(cfg: SweepConfig, n: int) -> list[dict]:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials))
    search.set_search_properties("val_metric", "max", build_search_space(cfg.space))
    return [search.suggest(str(i)) for i in range(n)]


def test_default_space_has_paper_ranges_and_log_lr():
    space = SweepConfig().space
    assert set(space) == {"mask_ratio", "layer_decay", "drop_path", "lr"}
    assert (space["mask_ratio"].low, space["mask_ratio"].high, space["mask_ratio"].step) == (0.5, 0.9, 0.05)
    assert (space["layer_decay"].low, space["layer_decay"].high) == (0.5, 0.95)
    assert (space["drop_path"].low, space["drop_path"].high) == (0.0, 0.3)
    assert space["lr"].log
    domains = build_search_space(space)
    assert (domains["lr"].lower, domains["lr"].upper) == (1e-4, 1e-2)
    assert str(domains["lr"].sampler) == "LogUniform" and str(domains["layer_decay"].sampler) == "Uniform"
    assert domains["mask_ratio"].sampler.q == 0.05


def test_seeded_tpe_suggestions_are_reproducible_in_range_and_on_the_grid():
    cfg = SweepConfig(seed=3)
    a, b = suggestions(cfg, 6), suggestions(cfg, 6)
    assert a == b
    assert a != suggestions(SweepConfig(seed=4), 6)
    for s in a:
        assert 0.5 <= s["mask_ratio"] <= 0.9 and abs(s["mask_ratio"] / 0.05 - round(s["mask_ratio"] / 0.05)) < 1e-6
        assert 0.5 <= s["layer_decay"] <= 0.95 and 0.0 <= s["drop_path"] <= 0.3 and 1e-4 <= s["lr"] <= 1e-2
    # log scale: the lr exponents spread over both decades, not bunched in the upper one
    lrs = [s["lr"] for s in suggestions(SweepConfig(seed=0, startup_trials=40), 40)]
    assert sum(math.log10(x) < -3 for x in lrs) >= 10


@pytest.mark.parametrize("space, message", [
    ({"lr": {"low": 1e-2, "high": 1e-3, "log": True}}, "space.lr: low must be < high"),
    ({"lr": {"low": 0.0, "high": 1e-3, "log": True}}, "space.lr: a log scale needs low > 0"),
    ({"momentum": {"low": 0.1, "high": 0.2}}, "space.momentum: unknown parameter"),
    ({"mask_ratio": {"low": 0.5, "high": 1.0}}, "space.mask_ratio: 1.0 is outside the valid interval (0.0, 1.0)"),
    ({"drop_path": {"low": 0.0, "high": 0.1, "step": 0.5}}, "space.drop_path: step 0.5 is larger than the range"),
])
def test_bad_ranges_are_errors_naming_the_key(space, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_space(space)
    with pytest.raises(ConfigError, match=message.split(":")[0]):
        load_config(SweepConfig, "tune", "tiny", overrides=[f"space={space}"])


def test_overrides_merge_into_the_preset_space_and_null_removes():
    cfg = load_config(SweepConfig, "tune", "tiny", overrides=["space.drop_path=null", "space.lr.high=0.05",
                                                              "space.warmup_epochs={low: 0, high: 2}"])
    assert list(cfg.space) == ["mask_ratio", "layer_decay", "lr", "warmup_epochs"]
    assert (cfg.space["lr"].low, cfg.space["lr"].high, cfg.space["lr"].log) == (3e-4, 0.05, True)


def test_empty_space_is_an_error():
    with pytest.raises(ValueError, match="space: at least one parameter is needed"):
        SweepConfig(space={})


def test_parameters_must_fit_the_pretraining_method():
    with pytest.raises(ValueError, match="space.paint_prob: applies to genesis pre-training, the sweep pre-trains with mae"):
        check_space({"paint_prob": {"low": 0.5, "high": 0.9}}, "mae")
    with pytest.raises(ValueError, match="space.mask_ratio: a pre-training parameter, but the sweep has no pre-training"):
        check_space({"mask_ratio": {"low": 0.5, "high": 0.9}}, None)
    cfg = load_config(SweepConfig, "tune", "tiny", overrides=["space={flip_prob: {low: 0.1, high: 0.5}}"])
    with pytest.raises(ValueError, match="space.flip_prob"):
        plan_sweep(cfg)


def test_trial_configs_apply_searched_values_and_share_the_finetuning_split():
    cfg = load_config(SweepConfig, "tune", "tiny", overrides=["finetune.data.folds=5", "finetune.data.test_fold=2"])
    pre, ft = trial_configs(cfg, {"mask_ratio": 0.6, "layer_decay": 0.55, "drop_path": 0.2, "lr": 3e-3})
    assert pre.model.mask_ratio == 0.6 and pre.preset == "tiny" and pre.epochs == 3
    assert (ft.model.layer_decay, ft.model.drop_path, ft.optim.lr, ft.epochs) == (0.55, 0.2, 3e-3, 4)
    assert ft.data.roi == (32, 32, 32) and pre.data.roi == (32, 32, 32)
    # the encoder is pre-trained on the fine-tuning training split only
    assert (pre.data.folds, pre.data.val_fold, pre.data.test_fold) == (5, 0, 2)
    assert pre.data.source == ft.data.source == "synthetic:ct:8"
    other = load_config(SweepConfig, "tune", "tiny", overrides=["finetune.data.source=synthetic:ct:12",
                                                                 "finetune.data.test_fold=2"])
    assert trial_configs(other, {})[0].data.source == "synthetic:ct:12"
    own = load_config(SweepConfig, "tune", "tiny", overrides=["pretrain.data.source=synthetic:ct:20"])
    pre_own = trial_configs(own, {})[0]
    # its own data, the pre-training preset's own split
    own_split = load_config(PretrainConfig, "pretrain", "tiny").data
    assert pre_own.data.source == "synthetic:ct:20" and pre_own.data.test_fold == own_split.test_fold
    assert default_params(cfg) == {"mask_ratio": 0.75, "layer_decay": 0.75, "drop_path": 0.1, "lr": 5e-3}
    with pytest.raises(ConfigError, match="fine-tuning config of the sweep.*\n  epochs"):
        trial_configs(load_config(SweepConfig, "tune", "tiny", overrides=["finetune.epochs=0"]), {})


def test_asha_rungs_stop_before_the_final_validation():
    cfg = load_config(SweepConfig, "tune", "tiny")
    _, ft = trial_configs(cfg, {})
    assert asha_max_t(ft, 1) == 3  # validations at 1, 2, 3, 4: the last one is never a rung
    ft.eval.val_every = 5
    ft.epochs = 12
    assert asha_max_t(ft, 5) == 10
    with pytest.raises(ValueError, match="asha.grace_period=11"):
        asha_max_t(ft, 11)


def test_concurrent_trials_leave_cpus_for_ray_data():
    cfg = SweepConfig(max_concurrent_trials=None, data_cpus=1, num_samples=8)
    assert concurrent_trials(cfg, train_cpus=1.0, cluster_cpus=8) == 7
    assert concurrent_trials(cfg, train_cpus=2.0, cluster_cpus=8) == 3
    assert concurrent_trials(SweepConfig(num_samples=2), 1.0, 8) == 2
    with pytest.raises(ValueError, match="max_concurrent_trials=2: only 1 trials"):
        concurrent_trials(SweepConfig(max_concurrent_trials=2), 1.0, 2)
    with pytest.raises(ValueError, match="a trial needs 4.0 CPUs"):
        concurrent_trials(cfg, 4.0, 4)


def test_job_rejects_unknown_task_and_bad_ranges_before_ray():
    import subprocess
    import sys
    from pathlib import Path

    job = str(Path(__file__).resolve().parents[1] / "jobs" / "tune.py")
    run = lambda *a: subprocess.run([sys.executable, job, *a], capture_output=True, text=True, timeout=120)  # noqa: E731
    out = run("--task", "nope")
    assert out.returncode == 2 and "no tune preset for task 'nope'; available: " in out.stderr and "tiny" in out.stderr
    out = run("--task", "tiny", "space.lr.low=0")
    assert out.returncode == 2 and "space.lr: a log scale needs low > 0" in out.stderr
    out = run("--task", "tiny", "asha.grace_period=9")
    assert out.returncode == 2 and "asha.grace_period=9" in out.stderr
    out = run("--task", "tiny", "finetune.model.drop_pth=0.1")
    assert out.returncode == 2 and "model.drop_pth: unknown key" in out.stderr
