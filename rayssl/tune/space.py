"""Ray Tune's side of the search space: Tune domains and each trial's pre-training and fine-tuning configs.

Which config field each searched name sets, and the range checks, are :mod:`rayssl.config.search_space`.
"""

from __future__ import annotations

from typing import Any

from rayssl.config import ConfigError, FinetuneConfig, PretrainConfig, build_config, dump_config, load_config, merge, nest
from rayssl.config.search_space import PARAMS


def build_search_space(space: dict) -> dict:
    """Ray Tune domains for a space ``SweepConfig`` validated: ``uniform`` / ``loguniform``, quantised when
    ``step`` is set.

    OptunaSearch turns them into Optuna distributions (``step`` -> a discrete grid, ``log`` -> log scale).
    """
    from ray import tune

    out = {}
    for name, rng in space.items():
        r = rng if isinstance(rng, dict) else rng.model_dump()
        low, high, step = float(r["low"]), float(r["high"]), r.get("step")
        if r.get("log"):
            out[name] = tune.qloguniform(low, high, step) if step else tune.loguniform(low, high)
        else:
            out[name] = tune.quniform(low, high, step) if step else tune.uniform(low, high)
    return out


def job_config(cls, job: str, preset: str | None, overrides: dict, params: dict | None = None, origin: str = ""):
    """A validated ``cls`` config: the preset, then ``overrides``, then the searched ``params`` of this job."""
    data = dump_config(load_config(cls, job, preset))
    data = merge(data, nest(overrides))
    for name, value in (params or {}).items():
        if PARAMS[name].job == job:
            data = merge(data, nest({PARAMS[name].key: value}))
    cfg = build_config(cls, data, origin or f"{job} config of the sweep")
    if "preset" in cls.model_fields and cfg.preset is None:
        cfg.preset = preset
    return cfg


def trial_configs(sweep, params: dict) -> tuple[PretrainConfig | None, FinetuneConfig]:
    """The pre-training config (``None`` without pre-training) and fine-tuning config of one trial.

    Args:
        sweep: the :class:`~rayssl.config.SweepConfig`.
        params: searched values, e.g. ``{"mask_ratio": 0.65, "lr": 1e-3}``.

    Raises:
        ConfigError: the presets, overrides or values do not form valid configs (named keys).
    """
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ConfigError(f"unknown searched parameters {unknown}; known: {', '.join(PARAMS)}")
    ft = job_config(FinetuneConfig, "finetune", sweep.finetune_preset, sweep.finetune, params,
                    "fine-tuning config of the sweep (finetune_preset + finetune + searched values)")
    pre = None
    if sweep.pretrain_preset is not None:
        overrides = nest(dict(sweep.pretrain))
        source = overrides.get("data", {}).get("source")
        if source is None or source == ft.data.source:
            # self pre-training: the fine-tuning data, and only its training split (same folds hold out val/test)
            split = {"data": {"source": ft.data.source, "folds": ft.data.folds, "val_fold": ft.data.val_fold,
                              "test_fold": ft.data.test_fold}}
            overrides = merge(split, overrides)
        elif isinstance(source, list) and ft.data.source in source:
            # a pool that lists the fine-tuning source takes its training split only: the same folds
            split = {"data": {"folds": ft.data.folds, "val_fold": ft.data.val_fold, "test_fold": ft.data.test_fold}}
            overrides = merge(split, overrides)
        pre = job_config(PretrainConfig, "pretrain", sweep.pretrain_preset, overrides, params,
                         "pre-training config of the sweep (pretrain_preset + pretrain + searched values)")
    return pre, ft


def default_params(sweep) -> dict:
    """Each searched parameter at the value its preset sets (what the from-scratch baseline uses)."""
    pre, ft = trial_configs(sweep, {})
    out = {}
    for name in sweep.space:
        p = PARAMS[name]
        cfg = pre if p.job == "pretrain" else ft
        if cfg is None:
            continue
        value: Any = cfg
        for part in p.key.split("."):
            value = getattr(value, part)
        out[name] = value
    return out
