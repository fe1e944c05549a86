"""The searchable hyper-parameters: which job and config field each name sets, its valid interval, and
the check of a sweep's search space.

Below the configs (``rayssl.config`` validates ``SweepConfig.space`` with it) and imports nothing of
rayssl; Ray Tune's side of the space (domains, trial configs) is in :mod:`rayssl.tune.space`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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
