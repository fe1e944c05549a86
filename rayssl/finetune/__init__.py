"""Downstream fine-tuning and evaluation: UNETR / Genesis U-Net segmentation, ViT classification.

Names are imported lazily, so ``import rayssl.finetune.metrics`` does not pull in Ray.
"""

from rayssl._lazy import lazy_exports

_EXPORTS = {
    "finetune": "driver",
    "plan_finetune": "driver",
    "load_pretrained": "weights",
    "resolve_pretrained": "weights",
    "build_model": "models",
    "dice_hd95": "metrics",
    "multilabel_auc": "metrics",
    "evaluate_segmentation": "evaluate",
    "evaluate_classification": "evaluate",
    "predict_volume": "evaluate",
    "train_loop_per_worker": "loop",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
