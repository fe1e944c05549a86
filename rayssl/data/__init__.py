"""Reading, preprocessing and patchifying medical images; Ray Data pipelines; the volume cache;
fresh crops every epoch on the training workers.

Names are imported lazily, so ``import rayssl.data.io`` does not pull in Ray.
"""

from rayssl._lazy import lazy_exports

_EXPORTS = {
    "BadInput": "io",
    "Case": "sources",
    "Source": "sources",
    "resolve_source": "sources",
    "resolve_pool": "sources",
    "load_case": "preprocess",
    "sample_patches": "patches",
    "case_rng": "patches",
    "grid_origins": "patches",
    "QuarantineError": "sources",
    "case_dataset": "pipeline",
    "train_volumes": "pipeline",
    "epoch_batches": "crops",
    "prepare": "pipeline",
    "read_volumes": "cache",
    "read_manifest": "cache",
    "write_case": "cache",
    "read_case": "cache",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
