"""One Tune trial: get (or pre-train) the encoder for its mask ratio, then fine-tune on Ray Train.

Ray Train V2 inside Tune: the trial function builds and fits a ``TorchTrainer`` whose
``TuneReportCallback`` forwards every validation (``val_metric``, ``epoch``) to Tune, where ASHA may
stop the trial. The pre-training ``TorchTrainer`` has no such callback, so its reports stay out of Tune.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rayssl.config import SweepConfig
from rayssl.tune.layout import FINETUNE_DIR, STORE_DIR, TRIAL_FILE, store_root
from rayssl.tune.space import trial_configs


def tune_trial(params: dict, sweep: dict, sweep_dir: str) -> None:
    """The Tune trainable (wrap with ``tune.with_parameters``).

    Args:
        params: the searched values Tune chose for this trial.
        sweep: the :class:`SweepConfig` as a dict.
        sweep_dir: the sweep (Tune experiment) directory; the trial works in ``<sweep_dir>/<trial id>``.
    """
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rayssl.finetune.driver import finetune
    from rayssl.tune.store import PretrainStore

    cfg = SweepConfig.model_validate(sweep)
    trial_id = tune.get_context().get_trial_id()
    trial_dir = Path(sweep_dir) / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pre_cfg, ft_cfg = trial_configs(cfg, params)
    info = {"trial_id": trial_id, "params": params, "pretrain": None}
    if pre_cfg is not None:
        root = store_root(cfg.store, sweep_dir) if cfg.reuse_pretraining else str(trial_dir / STORE_DIR)
        store = PretrainStore(root, bucket=cfg.mask_bucket)
        got = store.get_or_pretrain(pre_cfg)
        ft_cfg.pretrained = got["weights"]
        info["pretrain"] = {k: got[k] for k in ("key", "reused", "weights", "wall_time_s", "waited_s")}
    info["pretrain_s"] = time.perf_counter() - t0
    (trial_dir / TRIAL_FILE).write_text(json.dumps(info, indent=1))
    ft_cfg.run.name, ft_cfg.run.storage_path = FINETUNE_DIR, str(trial_dir)  # same name on retry: resumes
    finetune(ft_cfg, callbacks=[TuneReportCallback()])
    info["wall_time_s"] = time.perf_counter() - t0  # only trials that ran to the end get here
    (trial_dir / TRIAL_FILE).write_text(json.dumps(info, indent=1))
