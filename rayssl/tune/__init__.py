"""Hyper-parameter search (Ray Tune + Optuna + ASHA), the pre-trained encoder store and leaderboards.

Names are imported lazily, so ``import rayssl.tune.leaderboard`` does not pull in Ray Tune.
"""

from rayssl._lazy import lazy_exports

_EXPORTS = {
    "run_sweep": "sweep",
    "plan_sweep": "sweep",
    "build_tuner": "sweep",
    "tune_trial": "trial",
    "build_search_space": "space",
    "trial_configs": "space",
    "PretrainStore": "store",
    "StoreLock": "store",
    "bucket_mask_ratio": "store",
    "store_key": "store",
    "write_leaderboard": "leaderboard",
    "merge_leaderboards": "leaderboard",
    "load_sweep": "leaderboard",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
