"""What every config schema shares: the strict base model, the config error, the divisibility check."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


def check_divisible(roi, by: int, what: str, key: str = "data.roi") -> None:
    """Raise ``ValueError`` naming ``key`` unless every axis of ``roi`` is a multiple of ``by``."""
    bad = [int(s) for s in roi if s < by or s % by]
    if bad:
        raise ValueError(f"{key}={list(roi)}: every axis must be a multiple of {by} ({what}); "
                         f"e.g. {[max(by, round(s / by) * by) for s in roi]}")


class Strict(BaseModel):
    """Unknown keys are errors, assignments are validated, attribute docstrings describe the fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

