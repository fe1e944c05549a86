"""Hyper-parameter search (Ray Tune + Optuna + ASHA), the pre-trained encoder store and leaderboards.

Names are imported lazily, so ``import rayssl.tune.leaderboard`` does not pull in Ray Tune.
"""

from importlib import import_module

_EXPORTS = {
    "run_sweep": "sweep",
    "plan_sweep": "sweep",
    "build_tuner": "sweep",
    "tune_trial": "trial",
    "PARAMS": "space",
    "build_search_space": "space",
    "check_space": "space",
    "trial_configs": "space",
    "PretrainStore": "store",
    "StoreLock": "store",
    "bucket_mask_ratio": "store",
    "store_key": "store",
    "write_leaderboard": "leaderboard",
    "merge_leaderboards": "leaderboard",
    "load_sweep": "leaderboard",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rayssl.tune' has no attribute {name!r}")
    value = getattr(import_module(f"rayssl.tune.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
