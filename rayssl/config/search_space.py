"""The searchable hyper-parameters: which job and config field each name sets, its valid interval (read from
that field's pydantic bounds), and the check of a sweep's search space.

``SweepConfig`` validates its ``space`` with it; Ray Tune's side of the space (domains, trial configs) is in
:mod:`rayssl.tune.space`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import BaseModel

from rayssl.config.jobs import FinetuneConfig, PretrainConfig

JOBS: dict[str, type[BaseModel]] = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


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


def _param(job: str, key: str, method: str | None = None) -> Param:
    """The parameter that sets ``job``'s field ``key``, with the interval of the field's ``ge``/``gt``/``le``/``lt``."""
    cls, *path, name = (JOBS[job], *key.split("."))
    for part in path:
        cls = cls.model_fields[part].annotation
    lo, hi, lo_open, hi_open = -math.inf, math.inf, False, False
    for m in cls.model_fields[name].metadata:
        if getattr(m, "ge", None) is not None:
            lo, lo_open = float(m.ge), False
        if getattr(m, "gt", None) is not None:
            lo, lo_open = float(m.gt), True
        if getattr(m, "le", None) is not None:
            hi, hi_open = float(m.le), False
        if getattr(m, "lt", None) is not None:
            hi, hi_open = float(m.lt), True
    return Param(job, key, lo, hi, lo_open, hi_open, method)


PARAMS: dict[str, Param] = {
    "mask_ratio": _param("pretrain", "model.mask_ratio", method="mae"),
    "layer_decay": _param("finetune", "model.layer_decay"),
    "drop_path": _param("finetune", "model.drop_path"),
    "lr": _param("finetune", "optim.lr"),
    "weight_decay": _param("finetune", "optim.weight_decay"),
    "warmup_epochs": _param("finetune", "optim.warmup_epochs"),
    "flip_prob": _param("pretrain", "corruption.flip_prob", method="genesis"),
    "shuffle_prob": _param("pretrain", "corruption.shuffle_prob", method="genesis"),
    "nonlinear_prob": _param("pretrain", "corruption.nonlinear_prob", method="genesis"),
    "paint_prob": _param("pretrain", "corruption.paint_prob", method="genesis"),
    "inpaint_rate": _param("pretrain", "corruption.inpaint_rate", method="genesis"),
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
    if pretrain_method != "any":
        check_methods(space, pretrain_method)


def check_methods(space: dict, pretrain_method: str | None) -> None:
    """Raise ``ValueError`` (``space.<name>: ...``) for a pre-training parameter the sweep cannot use:
    any, when it does not pre-train (``pretrain_method`` ``None``); one of the other method otherwise."""
    for name in space:
        p = PARAMS[name]
        if p.job != "pretrain":
            continue
        if pretrain_method is None:
            raise ValueError(f"space.{name}: a pre-training parameter, but the sweep has no pre-training "
                             "(pretrain_preset is null)")
        if p.method and p.method != pretrain_method:
            raise ValueError(f"space.{name}: applies to {p.method} pre-training, the sweep pre-trains with {pretrain_method}")
