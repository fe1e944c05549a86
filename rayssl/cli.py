"""What every job in ``jobs/`` shares: argument parsing into a typed config, and Ray start-up."""

from __future__ import annotations

import argparse
import os
import sys

from rayssl.config import ConfigError, load_config


def parse_job_args(job: str, cls, description: str, default_preset: str | None = None, argv=None, extra=None):
    """Parse ``[--preset NAME] [--config FILE] [key=value ...]`` into a validated ``cls`` config.

    ``extra(parser)`` may add job-specific flags; they are returned in the namespace. A config
    error prints the message and exits with status 2, before Ray starts.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", default=default_preset, help=f"a preset in rayssl/presets/{job}/")
    parser.add_argument("--config", default=None, help="a YAML file merged over the preset")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, dotted keys for nesting")
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(cls, job, preset=args.preset, file=args.config, overrides=args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if "preset" in cls.model_fields and args.preset and cfg.preset is None:
        cfg.preset = args.preset
    return cfg, args


def init_ray() -> None:
    """Join the cluster a job was submitted to (``RAY_ADDRESS`` / job context), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(include_dashboard=False)
