"""Prediction on new cases with fine-tuned models: ensembles, flip TTA, outputs on each file's own grid.

Names are imported lazily, so ``import rayssl.predict.infer`` does not pull in Ray.
"""

from rayssl._lazy import lazy_exports

_EXPORTS = {
    "predict": "driver",
    "plan_predict": "driver",
    "load_models": "models",
    "PredictModel": "models",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
