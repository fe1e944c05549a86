"""Reading, preprocessing and patchifying medical images; Ray Data pipelines; the Parquet patch cache.

Names are imported lazily, so ``import rayssl.data.io`` does not pull in Ray.
"""

from rayssl._lazy import lazy_exports

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
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
