"""Typed job configs: presets (YAML in the package), YAML files, ``key=value`` overrides.

Every job has one config class. ``load_config`` merges, in order, the preset, an optional YAML file and
command-line overrides (dotted keys for nesting), then validates the result. An unknown key or a value of
the wrong type raises :class:`ConfigError` naming the key, before any Ray worker starts.

* :mod:`.base`: the strict base model, ``ConfigError``; :mod:`.loader`: presets, YAML, overrides, hints.
* Schemas: :mod:`.data` (``DataConfig``), :mod:`.model` (the networks, Models Genesis' corruptions),
  :mod:`.train` (optimiser, scale, run directory, evaluation), :mod:`.jobs` (``JobConfig`` and a config per
  job), :mod:`.sweep` (``SweepConfig``).
* Tables the schemas validate with: :mod:`.recipes` (preprocessing), :mod:`.search_space` (searchable
  parameters), :mod:`.corruption` (Models Genesis' probabilities, pure Python).

Names are imported lazily, so ``import rayssl.config.corruption`` or ``.recipes`` needs neither pydantic
nor YAML (the Models Genesis corruptions run on bare GPU machines).
"""

from importlib import resources  # noqa: F401  (the loader reads the presets through it; tests patch its files)

from rayssl._lazy import lazy_exports

_EXPORTS = {
    "ConfigError": "base",
    "Strict": "base",
    "check_divisible": "base",
    "DataConfig": "data",
    "is_pool_spec": "data",
    "ModelConfig": "model",
    "CorruptionConfig": "model",
    "FinetuneModelConfig": "model",
    "TaskConfig": "model",
    "resenc_divisor": "model",
    "CorruptionProbs": "corruption",
    "OptimConfig": "train",
    "ScaleConfig": "train",
    "RunConfig": "train",
    "EvalConfig": "train",
    "JobConfig": "jobs",
    "PrepareConfig": "jobs",
    "PretrainConfig": "jobs",
    "FinetuneConfig": "jobs",
    "PredictConfig": "jobs",
    "ParamRange": "sweep",
    "AshaConfig": "sweep",
    "SweepConfig": "sweep",
    "load_config": "loader",
    "build_config": "loader",
    "parse_override": "loader",
    "preset_names": "loader",
    "merge": "loader",
    "nest": "loader",
    "config_keys": "loader",
    "dump_config": "loader",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
