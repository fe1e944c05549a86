"""Typed job configs: presets (YAML in the package), YAML files, ``key=value`` overrides.

Every job has one config class. ``load_config`` merges, in order, the preset, an
optional YAML file and command-line overrides (dotted keys for nesting), then
validates the result. An unknown key or a value of the wrong type raises
:class:`ConfigError` naming the key, before any Ray worker starts.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

RECIPES = ("ct_btcv", "ct_genesis", "mri_brats", "cxr", "none")
SAMPLINGS = ("random", "balanced", "genesis", "grid")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    """Where the volumes come from, how they are preprocessed and cut into patches."""

    source: str = "synthetic:ct:8"
    """``synthetic:ct|mri|cxr[:N]``, a path (auto-detected), or ``msd:``/``folder:``/``csv:``/``cxr14:`` + path."""
    recipe: Literal["ct_btcv", "ct_genesis", "mri_brats", "cxr", "none"] | None = None
    """Preprocessing recipe; ``None`` picks the source's natural one."""
    spacing: tuple[float, ...] | None = None
    """Target voxel spacing in mm; ``None`` keeps the recipe default."""
    roi: tuple[int, ...] = (96, 96, 96)
    """Patch (sub-volume) shape: 3 ints for volumes, 2 for images."""
    patches_per_volume: int = Field(4, ge=1)
    sampling: Literal["random", "balanced", "genesis", "grid"] = "random"
    pos_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """``balanced`` sampling: fraction of patches centred on a labelled voxel."""
    air_threshold: float = 0.15
    """``genesis`` sampling: intensity (after windowing) below which a voxel counts as air."""
    min_tissue_fraction: float = Field(0.5, ge=0.0, le=1.0)
    """``genesis`` sampling: reject crops with a smaller fraction of non-air voxels."""
    grid_overlap: float = Field(0.0, ge=0.0, lt=1.0)
    splits: list[Literal["train", "val", "test"]] = ["train"]
    """Which splits to emit patches for."""
    folds: int = Field(5, ge=2)
    val_fold: int = Field(0, ge=0)
    test_fold: int | None = None
    """Carve a labelled test split out of the training cases (for sources without one)."""
    seed: int = 0
    strict: bool = False
    """Turn any quarantined input into an error."""
    patch_dtype: Literal["float32", "float16"] = "float32"
    cache_dir: str | None = None
    """Parquet shards of patches written by ``prepare_data``; when set, training reads them."""
    synthetic_dir: str | None = None
    """Where synthetic phantoms are written (default ``~/.cache/rayssl/synthetic``)."""

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if len(self.roi) not in (2, 3) or min(self.roi) < 1:
            raise ValueError(f"roi must be 2 or 3 positive ints, got {self.roi}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ValueError(f"spacing must be 3 positive mm values, got {self.spacing}")
        if self.val_fold >= self.folds:
            raise ValueError(f"val_fold={self.val_fold} must be < folds={self.folds}")
        if self.test_fold is not None and (self.test_fold >= self.folds or self.test_fold == self.val_fold):
            raise ValueError(f"test_fold={self.test_fold} must be < folds and differ from val_fold")
        return self


class PrepareConfig(Strict):
    """``jobs/prepare_data.py``: run the data pipeline and cache patches as Parquet."""

    data: DataConfig = DataConfig()
    out: str | None = None
    """Output directory or ``s3://`` / ``gs://`` URI of the Parquet shards and manifest."""
    rows_per_file: int = Field(256, ge=1)


# --------------------------------------------------------------------------- loading


def preset_names(job: str) -> list[str]:
    folder = resources.files("rayssl") / "presets" / job
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, origin: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> dict:
    """``"data.roi=[64,64,32]"`` -> ``{"data": {"roi": [64, 64, 32]}}`` (values parsed as YAML)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: expected key=value with a dotted key, e.g. data.roi=[64,64,32]")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<config>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def build_config(cls: type[BaseModel], data: dict, origin: str = "config") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid {origin}:\n{_format_errors(err)}") from None


def load_config(
    cls: type[BaseModel],
    job: str,
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Any:
    """Build a validated config of type ``cls``.

    Args:
        cls: the job's config class, e.g. :class:`PrepareConfig`.
        job: the preset folder, e.g. ``"pretrain"``.
        preset: name of a YAML preset shipped in ``rayssl/presets/<job>/``.
        file: a YAML file merged over the preset.
        overrides: ``key=value`` strings merged last; dotted keys address nested fields.

    Raises:
        ConfigError: unknown preset, unreadable file, unknown key or wrong value type.
    """
    data: dict = {}
    origin = []
    if preset is not None:
        names = preset_names(job)
        if preset not in names:
            raise ConfigError(f"unknown {job} preset {preset!r}; available: {', '.join(names) or 'none'}")
        text = (resources.files("rayssl") / "presets" / job / f"{preset}.yaml").read_text()
        data = _merge(data, _read_yaml(text, f"preset {preset!r}"))
        origin.append(f"preset {preset!r}")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = _merge(data, _read_yaml(path.read_text(), str(path)))
        origin.append(str(path))
    for item in overrides:
        data = _merge(data, parse_override(item))
    if overrides:
        origin.append("overrides")
    return build_config(cls, data, f"{job} config ({' + '.join(origin) or 'defaults'})")


def dump_config(cfg: BaseModel) -> dict:
    """A JSON/YAML-serialisable dict of ``cfg`` that ``build_config`` accepts back."""
    return cfg.model_dump(mode="json")
