"""The files of a sweep directory, shared by the sweep, its trials and the leaderboards.

``<sweep>/sweep.json`` (the config and what was searched), ``<sweep>/<trial id>/trial.json`` (which encoder
the trial used) and ``<sweep>/<trial id>/finetune/`` (its Ray Train run), ``<sweep>/baseline/`` (the
from-scratch run) and ``<sweep>/pretrain_store/`` (the encoders, unless ``store=`` points elsewhere).
"""

from __future__ import annotations

from pathlib import Path

SWEEP_FILE = "sweep.json"
TRIAL_FILE = "trial.json"
FINETUNE_DIR = "finetune"
BASELINE_DIR = "baseline"
STORE_DIR = "pretrain_store"
TUNE_RESULT = "result.json"
"""Ray Tune's own file in a trial directory: one JSON line per report (a run directory's is ``RunDir.RESULT``)."""


def store_root(store: str | None, sweep_dir: str) -> str:
    """The sweep's encoder store: ``store`` (shared between sweeps) or ``<sweep>/pretrain_store``."""
    return str(Path(store).expanduser().resolve()) if store else f"{sweep_dir}/{STORE_DIR}"
