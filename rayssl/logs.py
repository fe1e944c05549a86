"""rayssl's console: every module logs to its own ``logging`` logger under ``rayssl``; the jobs (and the
Ray Train workers, whose processes start without a logging set-up) show those records as
``[rayssl] message`` lines on standard output."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: int = logging.INFO) -> None:
    """Print the ``rayssl`` loggers' records at ``level`` and above to standard output (once per process)."""
    root = logging.getLogger("rayssl")
    if not any(getattr(h, "_rayssl", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[rayssl] %(message)s"))
        handler._rayssl = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level)
