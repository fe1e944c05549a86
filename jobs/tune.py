"""Hyper-parameter search (Ray Tune + Optuna TPE + ASHA) for one downstream task, then its leaderboard.

    python jobs/tune.py --task NAME [--preset NAME] [--config FILE] [num_samples=N] [key=value ...]

``--task`` names the task and picks the preset ``rayssl/presets/tune/<task>.yaml`` unless ``--preset`` is
given. Re-running with the same ``name=...`` resumes the sweep. The last printed line is the sweep directory
(``leaderboard.csv``, ``leaderboard.md``, ``leaderboard.png``).
"""

import argparse
import sys

from rayssl.cli import init_ray, parse_job_args
from rayssl.config import ConfigError, SweepConfig, preset_names

if __name__ == "__main__":
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default=None)
    pre.add_argument("--preset", default=None)
    known, _ = pre.parse_known_args()
    if known.preset is None and (known.task or "tiny") not in preset_names("tune"):
        print(f"error: no tune preset for task {known.task!r}; available: {', '.join(preset_names('tune'))} "
              "(or pass --preset NAME)", file=sys.stderr)
        raise SystemExit(2)
    cfg, args = parse_job_args("tune", SweepConfig, __doc__.splitlines()[0], default_preset=known.task or "tiny",
                               extra=lambda p: p.add_argument("--task", default=None, help="downstream task name"))
    if args.task:
        cfg.task = args.task
    from rayssl.tune.sweep import plan_sweep, run_sweep

    try:
        plan_sweep(cfg)  # every config error before Ray starts
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    init_ray()
    print(run_sweep(cfg))
