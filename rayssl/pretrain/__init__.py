"""Self pre-training: the driver, the worker loop and the two methods' objectives (MAE; Models Genesis with
its corruptions), and reconstruction previews.

Names are imported lazily, so ``import rayssl.pretrain.genesis_corruptions`` does not pull in Ray.
"""

from rayssl._lazy import lazy_exports

_EXPORTS = {
    "pretrain": "driver",
    "plan_pretrain": "driver",
    "build_model": "methods",
    "build_objective": "methods",
    "GenesisCorruption": "genesis_corruptions",
    "train_loop_per_worker": "loop",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
