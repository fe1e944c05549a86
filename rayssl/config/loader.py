"""Loading configs: presets (YAML in ``rayssl/presets/<job>/``, a ``base:`` key names the preset they build on),
YAML files and ``key=value`` overrides, merged in that order and validated into the job's config class.

An unknown key or a value of the wrong type raises :class:`ConfigError` naming the key (with a did-you-mean
hint), before any Ray worker starts. ``config_keys`` lists every key for ``--help``.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rayssl.config.base import ConfigError


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


def merge(base: dict, update: dict) -> dict:
    """``update`` merged into a copy of ``base``, nested mappings key by key."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _dotted(key: str, value: Any, origin: str) -> dict:
    """``("data.roi", v)`` -> ``{"data": {"roi": v}}``."""
    if not isinstance(key, str) or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(f"{origin}: expected a dotted config key such as data.roi, got {key!r}")
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def _plain_list(raw: str) -> list[str] | str:
    """``[a,b]`` that is not valid YAML (a path with ``{``, ``#``, ``*``...) as the list of its comma-separated
    items, each a string; any other text unchanged."""
    text = raw.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return raw
    return [item.strip() for item in text[1:-1].split(",") if item.strip()]


def parse_override(item: str) -> dict:
    """``"data.roi=[64,64,32]"`` -> ``{"data": {"roi": [64, 64, 32]}}`` (values parsed as YAML).

    A list is YAML's flow sequence, so ``data.source=[msd:/data/Task03_Liver,folder:/archive/ct]`` is a list of
    two SPECs; a bracketed value YAML cannot parse is split at its commas into strings, and text that YAML
    cannot parse otherwise is kept as it is.
    """
    key, sep, raw = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r}: expected key=value with a dotted key, e.g. data.roi=[64,64,32]")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = _plain_list(raw)
    return _dotted(key, value, f"override {item!r}")


def nest(overrides: dict[str, Any]) -> dict:
    """``{"data.roi": [32, 32, 32], "epochs": 2}`` -> ``{"data": {"roi": [...]}, "epochs": 2}`` (nested input kept)."""
    out: dict = {}
    for key, value in overrides.items():
        out = merge(out, _dotted(key, nest(value) if isinstance(value, dict) else value, "override key"))
    return out


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the (nested) config model that holds ``loc``'s last key."""
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part))
        sub = getattr(field, "annotation", None) if field else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return []
        cls = sub
    return list(cls.model_fields)


def _format_errors(err: ValidationError, cls: type[BaseModel] | None = None) -> str:
    import difflib

    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<config>"
        if e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(e["loc"][-1]), _fields_at(cls, e["loc"]) if cls else [], n=1)
            hint = f"; did you mean {'.'.join([*map(str, e['loc'][:-1]), near[0]])}?" if near else ""
            lines.append(f"  {key}: unknown key{hint}")
        elif e["type"] == "value_error":  # a validator's check: its message names the keys
            lines.append(f"  {key}: {e['msg'].removeprefix('Value error, ')}" if e["loc"] else
                         f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def build_config(cls: type[BaseModel], data: dict, origin: str = "config") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid {origin}:\n{_format_errors(err, cls)}") from None


def _preset(job: str, name: str, chain: tuple[str, ...] = ()) -> dict:
    """A shipped preset's values; a preset whose YAML names ``base: OTHER`` is OTHER's values with its own merged over."""
    import rayssl.config as package  # preset_names as the package exports it (tests replace it there)

    names = package.preset_names(job)
    if name not in names:
        raise ConfigError(f"unknown {job} preset {name!r}; available: {', '.join(names) or 'none'}")
    if name in chain:
        raise ConfigError(f"{job} presets {' -> '.join((*chain, name))}: a preset cannot be its own base")
    data = _read_yaml((resources.files("rayssl") / "presets" / job / f"{name}.yaml").read_text(), f"preset {name!r}")
    base = data.pop("base", None)
    return merge(_preset(job, str(base), (*chain, name)), data) if base is not None else data


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
        data = _preset(job, preset)
        origin.append(f"preset {preset!r}")
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = merge(data, _read_yaml(path.read_text(), str(path)))
        origin.append(str(path))
    for item in overrides:
        data = merge(data, parse_override(item))
    if overrides:
        origin.append("overrides")
    return build_config(cls, data, f"{job} config ({' + '.join(origin) or 'defaults'})")


def config_keys(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, first line of its description)`` of every field, nested ones included."""
    out = []
    for name, field in cls.model_fields.items():
        key, ann = f"{prefix}{name}", field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += config_keys(ann, f"{key}.")
            continue
        kind = getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann).replace("typing.", "")
        default = field.get_default(call_default_factory=True)
        doc = (field.description or "").strip().split("\n")[0]
        out.append((key, kind or str(ann), json.dumps(default, default=str) if default is not None else "null", doc))
    return out


def dump_config(cfg: BaseModel) -> dict:
    """A JSON/YAML-serialisable dict of ``cfg`` that ``build_config`` accepts back."""
    return cfg.model_dump(mode="json")
