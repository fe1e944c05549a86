"""Hyper-parameter search (Ray Tune + Optuna TPE + ASHA) for one downstream task, then its leaderboard.

    python jobs/tune.py --task NAME [--preset NAME] [--config FILE] [num_samples=N] [key=value ...]

``--task`` names the task and picks the preset ``rayssl/presets/tune/<task>.yaml`` unless ``--preset`` is
given. Re-running with the same ``name=...`` resumes the sweep, once every Ray Tune state file in it verifies
against the signatures rayssl wrote with its sweep key (``RAYSSL_SWEEP_KEY`` or ``~/.config/rayssl/sweep.key``);
a file that does not is named and the job exits with status 2 before Ray starts. The last printed line is the
sweep directory (``leaderboard.csv``, ``leaderboard.md``, ``leaderboard.png``).
"""

import argparse
import sys

from rayssl.cli import before_ray, fail, parse_job_args
from rayssl.config import SweepConfig, preset_names

if __name__ == "__main__":
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default=None)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args()
    if known.preset is None and (known.task or "tiny") not in preset_names("tune"):
        fail(f"no tune preset for task {known.task!r}; available: {', '.join(preset_names('tune'))} (or pass --preset NAME)")
    cfg, args = parse_job_args("tune", SweepConfig, __doc__.splitlines()[0], default_preset=known.task or "tiny",
                               extra=lambda p: p.add_argument("--task", default=None, help="downstream task name"))
    if args.task:
        cfg.task = args.task
    from rayssl.train.launch import init_ray
    from rayssl.tune.sweep import SweepInterrupted, plan_sweep, run_sweep

    before_ray(plan_sweep, cfg)  # every config error before Ray starts
    init_ray()
    try:
        print(run_sweep(cfg))
    except SweepInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        raise SystemExit(130) from None
