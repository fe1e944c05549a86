"""Reading, preprocessing and patchifying medical images; Ray Data pipelines; the Parquet patch cache.

Names are imported lazily, so ``import rayssl.data.io`` does not pull in Ray.
"""

from importlib import import_module

_EXPORTS = {
    "BadInput": "io",
    "Case": "sources",
    "Source": "sources",
    "resolve_source": "sources",
    "RECIPES": "recipes",
    "load_case": "recipes",
    "sample_patches": "patches",
    "case_rng": "patches",
    "grid_origins": "patches",
    "QuarantineLog": "pipeline",
    "QuarantineError": "pipeline",
    "case_dataset": "pipeline",
    "patch_dataset": "pipeline",
    "train_dataset": "pipeline",
    "prepare": "pipeline",
    "read_patches": "cache",
    "read_manifest": "cache",
    "write_patches": "cache",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rayssl.data' has no attribute {name!r}")
    value = getattr(import_module(f"rayssl.data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
