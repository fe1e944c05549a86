"""Downstream fine-tuning and evaluation: UNETR / Genesis U-Net segmentation, ViT classification.

Names are imported lazily, so ``import rayssl.finetune.metrics`` does not pull in Ray.
"""

from importlib import import_module

_EXPORTS = {
    "finetune": "driver",
    "plan_run": "driver",
    "load_pretrained": "weights",
    "resolve_pretrained": "weights",
    "build_model": "models",
    "lrd_param_groups": "models",
    "dice_hd95": "metrics",
    "multilabel_auc": "metrics",
    "evaluate_segmentation": "evaluate",
    "evaluate_classification": "evaluate",
    "predict_volume": "evaluate",
    "train_loop_per_worker": "loop",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rayssl.finetune' has no attribute {name!r}")
    value = getattr(import_module(f"rayssl.finetune.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
