"""The search space: which config field each searched name sets, range checks, Tune domains, trial configs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rayssl.config import (ConfigError, FinetuneConfig, PretrainConfig, _merge, build_config, dump_config,
                           load_config)


@dataclass(frozen=True)
class Param:
    """A searchable hyper-parameter: the job and dotted config key it sets, its valid interval."""

    job: str  # "pretrain" or "finetune"
    key: str
    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    method: str | None = None  # pre-training method it needs, if any


PARAMS: dict[str, Param] = {
    "mask_ratio": Param("pretrain", "model.mask_ratio", 0.0, 1.0, True, True, method="mae"),
    "layer_decay": Param("finetune", "model.layer_decay", 0.0, 1.0, lo_open=True),
    "drop_path": Param("finetune", "model.drop_path", 0.0, 1.0, hi_open=True),
    "lr": Param("finetune", "optim.lr", 0.0, math.inf, lo_open=True),
    "weight_decay": Param("finetune", "optim.weight_decay", 0.0, math.inf),
    "warmup_epochs": Param("finetune", "optim.warmup_epochs", 0.0, math.inf),
    "flip_prob": Param("pretrain", "corruption.flip_prob", 0.0, 1.0, method="genesis"),
    "shuffle_prob": Param("pretrain", "corruption.shuffle_prob", 0.0, 1.0, method="genesis"),
    "nonlinear_prob": Param("pretrain", "corruption.nonlinear_prob", 0.0, 1.0, method="genesis"),
    "paint_prob": Param("pretrain", "corruption.paint_prob", 0.0, 1.0, method="genesis"),
    "inpaint_rate": Param("pretrain", "corruption.inpaint_rate", 0.0, 1.0, method="genesis"),
}
"""Every name a sweep's ``space`` may use."""


def _inside(p: Param, x: float) -> bool:
    above = x > p.lo if p.lo_open else x >= p.lo
    below = x < p.hi if p.hi_open else x <= p.hi
    return above and below


def check_space(space: dict, pretrain_method: str | None = "any") -> None:
    """Validate a search space eagerly.

    Args:
        space: name -> range (``ParamRange`` or a mapping with ``low``, ``high``, ``log``, ``step``).
        pretrain_method: ``"mae"`` / ``"genesis"`` to check that pre-training parameters apply to the
            method, ``None`` when the sweep does not pre-train, ``"any"`` to skip that check.

    Raises:
        ValueError: unknown name, ``low >= high``, log scale with ``low <= 0``, a step larger than the
            range, bounds outside the field's valid interval, or a parameter the method does not use;
            the message starts with ``space.<name>``.
    """
    if not space:
        raise ValueError(f"space: at least one parameter is needed; known: {', '.join(PARAMS)}")
    for name, rng in space.items():
        r = rng if isinstance(rng, dict) else rng.model_dump()
        where = f"space.{name}"
        if name not in PARAMS:
            raise ValueError(f"{where}: unknown parameter; known: {', '.join(PARAMS)}")
        p = PARAMS[name]
        low, high = float(r["low"]), float(r["high"])
        if not low < high:
            raise ValueError(f"{where}: low must be < high, got low={low}, high={high}")
        if r.get("log") and low <= 0:
            raise ValueError(f"{where}: a log scale needs low > 0, got low={low}")
        step = r.get("step")
        if step is not None and step > high - low:
            raise ValueError(f"{where}: step {step} is larger than the range {low}..{high}")
        for bound in (low, high):
            if not _inside(p, bound):
                lb, rb = "(" if p.lo_open else "[", ")" if p.hi_open else "]"
                raise ValueError(f"{where}: {bound} is outside the valid interval {lb}{p.lo}, {p.hi}{rb} of {p.job} {p.key}")
        if pretrain_method != "any" and p.job == "pretrain":
            if pretrain_method is None:
                raise ValueError(f"{where}: a pre-training parameter, but the sweep has no pre-training "
                                 "(pretrain_preset is null)")
            if p.method and p.method != pretrain_method:
                raise ValueError(f"{where}: applies to {p.method} pre-training, the sweep pre-trains with {pretrain_method}")


def build_search_space(space: dict) -> dict:
    """Ray Tune domains for a validated space: ``uniform`` / ``loguniform``, quantised when ``step`` is set.

    OptunaSearch turns them into Optuna distributions (``step`` -> a discrete grid, ``log`` -> log scale).
    """
    from ray import tune

    check_space(space)
    out = {}
    for name, rng in space.items():
        r = rng if isinstance(rng, dict) else rng.model_dump()
        low, high, step = float(r["low"]), float(r["high"]), r.get("step")
        if r.get("log"):
            out[name] = tune.qloguniform(low, high, step) if step else tune.loguniform(low, high)
        else:
            out[name] = tune.quniform(low, high, step) if step else tune.uniform(low, high)
    return out


def nest(overrides: dict[str, Any]) -> dict:
    """``{"data.roi": [32, 32, 32], "epochs": 2}`` -> ``{"data": {"roi": [...]}, "epochs": 2}`` (nested input kept)."""
    out: dict = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override key {key!r}: expected a dotted config key such as data.roi")
        if isinstance(value, dict):
            value = nest(value)
        for part in reversed(key.split(".")):
            value = {part: value}
        out = _merge(out, value)
    return out


def job_config(cls, job: str, preset: str | None, overrides: dict, params: dict | None = None, origin: str = ""):
    """A validated ``cls`` config: the preset, then ``overrides``, then the searched ``params`` of this job."""
    data = dump_config(load_config(cls, job, preset))
    data = _merge(data, nest(overrides))
    for name, value in (params or {}).items():
        if PARAMS[name].job == job:
            data = _merge(data, nest({PARAMS[name].key: value}))
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
            overrides = _merge(split, overrides)
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
