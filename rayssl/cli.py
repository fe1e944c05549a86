"""What every job in ``jobs/`` shares: argument parsing into a typed config, the console, and checks that
fail before Ray starts."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, TypeVar

from rayssl.config import ConfigError, config_keys, load_config, preset_names
from rayssl.logs import VERBOSE_ENV, quiet_process

T = TypeVar("T")


def fail(message: str) -> None:
    """Print ``error: message`` and exit with status 2 (a usage or input error, before Ray starts)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_job_args(job: str, cls, description: str, default_preset: str | None = None, argv=None, extra=None):
    """Parse ``[--preset NAME] [--config FILE] [key=value ...]`` into a validated ``cls`` config.

    ``extra(parser)`` may add job-specific flags; they are returned in the namespace. A config
    error prints the message and exits with status 2, before Ray starts. Sets up rayssl's console
    (``--verbose``: every library's logs and progress bars too).
    """
    if "--verbose" in (sys.argv[1:] if argv is None else argv):
        os.environ[VERBOSE_ENV] = "1"
    quiet_process()
    presets = preset_names(job)
    keys = "\n".join(f"  {key} ({kind}, default {default})" + (f"\n      {doc}" if doc else "")
                     for key, kind, default, doc in config_keys(cls))
    epilog = (f"presets: {', '.join(presets) or 'none'}\n\nconfig keys (key=value, dotted for nesting):\n{keys}")
    parser = argparse.ArgumentParser(description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=default_preset, help=f"a preset in rayssl/presets/{job}/")
    parser.add_argument("--config", default=None, help="a YAML file merged over the preset")
    parser.add_argument("--verbose", action="store_true", help="show every library's logs and progress bars")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, dotted keys for nesting")
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(cls, job, preset=args.preset, file=args.config, overrides=args.overrides)
    except ConfigError as e:
        fail(str(e))
    if "preset" in cls.model_fields and args.preset and cfg.preset is None:
        cfg.preset = args.preset
    return cfg, args


def before_ray(check: Callable[..., T], *args) -> T:
    """``check(*args)``; its ``ValueError`` (``ConfigError`` included) ends the job with status 2."""
    try:
        return check(*args)
    except ValueError as e:
        fail(str(e))
