"""The files of a run directory, named once: the drivers write them, the workers append the metrics, and the
sweep, the leaderboards, predict and export read them (a sweep directory's own files: :mod:`rayssl.tune.layout`).

``<run.storage_path>/<run.name>/`` holds Ray Train's checkpoints and ``config.json``, ``metrics.jsonl`` (+
``metrics.csv``) and ``result.json``; a pre-training run also ``previews/*.png`` and ``export/encoder`` or
``export/unet`` (``.safetensors`` + ``.json`` sidecar); a fine-tuning run also ``best.safetensors``,
``pretrained_load.json``, ``plan_cases.json``, ``cases_val.csv`` / ``cases_test.csv``, ``predictions/*.nii.gz``
and ``overlays/*.png``; a cross-validation's summary folder ``cv_summary.json`` / ``cv_summary.md``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunDir:
    """Where a run lives: Ray Train's ``name`` under ``storage`` (a local absolute path or a URI), and ``path``.
    The class attributes name the files in it."""

    CONFIG = "config.json"
    """The run's config, every default filled in."""
    RESULT = "result.json"
    """What the run produced (written last: a run directory with it is finished)."""
    METRICS = "metrics.jsonl"
    """One line per report, appended by rank 0 (:class:`rayssl.train.artifacts.RunFiles`)."""
    METRICS_CSV = "metrics.csv"
    """``metrics.jsonl`` as a table."""
    PREVIEWS = "previews"
    """Pre-training: reconstruction previews, ``<tag>.png``."""
    EXPORT = "export"
    """Pre-training: the exported weights, ``<stem>.safetensors`` + ``<stem>.json`` (see :meth:`export_stem`)."""
    EXPORT_STEMS = ("encoder", "unet")
    """The exported weights' file stems: a ViT encoder (MAE), a U-Net (Models Genesis, cnn_mae)."""
    BEST = "best.safetensors"
    """Fine-tuning: the weights of the best validation (also inside every checkpoint)."""
    PRETRAINED_LOAD = "pretrained_load.json"
    """Fine-tuning: what the pre-trained weights loaded and what is new."""
    PLAN_CASES = "plan_cases.json"
    """Fine-tuning: the validation and test cases of the plan."""
    CASES_CSV = "cases_{split}.csv"
    """Fine-tuning: per-case scores of a split (``.format(split=...)``)."""
    PREDICTIONS = "predictions"
    """Fine-tuning: test predictions, ``<case_id>.nii.gz``."""
    OVERLAYS = "overlays"
    """Fine-tuning: test overlays, ``<case_id>.png``."""
    CV_SUMMARY = "cv_summary.json"
    CV_SUMMARY_MD = "cv_summary.md"
    """Cross-validation: the summary folder's files."""

    name: str
    storage: str
    path: str

    @staticmethod
    def export_stem(method: str) -> str:
        """The exported weights' stem of a pre-training ``method``: ``encoder`` for MAE, else ``unet``."""
        return RunDir.EXPORT_STEMS[0] if method == "mae" else RunDir.EXPORT_STEMS[1]
