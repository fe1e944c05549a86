"""rayssl's console: every module logs to its own ``logging`` logger under ``rayssl``; the jobs and every Ray
process of a job show those records as ``[rayssl] message`` lines on standard output, and keep the
libraries' chatter (Ray Data progress bars, Ray Train's per-report lines, DeepSpeed's info logs, known
harmless warnings) out of the console. ``RAYSSL_VERBOSE=1`` (``--verbose``) shows everything; Ray's own
log files under its session directory keep the full logs either way."""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from pathlib import Path

VERBOSE_ENV = "RAYSSL_VERBOSE"
QUIET_LOGGERS = ("ray.train", "ray.tune", "ray.data", "DeepSpeed", "torch.distributed")
HARMLESS = (  # (message regex, category): warnings libraries raise on every run, about nothing a user can change
    (r".*all_gather_into_tensor.*deprecated", FutureWarning),
    (r".*Converting a tensor with requires_grad=True to a scalar", UserWarning),
    (r".*TypedStorage is deprecated", UserWarning),
    (r".*torch\.cuda\.amp\..* is deprecated", FutureWarning),
    (r".*`torch\.library\.impl_abstract` was renamed", FutureWarning),
    (r".*`ExecutionOptions\.exclude_resources` is deprecated", DeprecationWarning),  # set by Ray Train itself
    (r"barrier\(\): using the device under current context", UserWarning),  # Ray Train's process group, on GPUs
)
QUIET_ENV = {"TORCH_CPP_LOG_LEVEL": "ERROR"}
"""Environment of a quiet job's processes: torch's C++ warnings off (c10d's "hostname of the client socket cannot
be retrieved" on GPU nodes; its errors still show)."""
NOT_RUN_ERRORS = (  # (logger, why): lines about conditions that are not errors of the run, at debug level
    ("ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
     "its resource request to the autoscaling coordinator times out on a single node or a busy head; Ray says "
     "it is safe to ignore, and the run's resources come from its placement group"),
    ("ray.train.v2._internal.callbacks.preemption_callback",
     "stopping the preemption watcher of a finished worker group"),
)


# Ray Data's logging with its console at WARNING (it re-reads the file for every dataset, in every process)
RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")


class QuietNotes(logging.Filter):
    """Ray Data's console note about the progress bars that the quiet console itself switched off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Progress bars disabled")


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


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


def _quiet_cleaner_threads(previous):
    """A ``threading.excepthook`` that keeps the traceback of Ray Train's placement-group cleaner thread
    (it dies when it cannot reach the state API, e.g. with two Ray instances on a machine) out of the
    console, at debug level; every other thread's exception goes to ``previous``."""

    def hook(args) -> None:
        if args.thread is not None and args.thread.name.startswith("PlacementGroupCleaner"):
            logging.getLogger(__name__).debug("Ray Train's %s stopped: %r", args.thread.name, args.exc_value)
            return
        previous(args)

    hook._rayssl = True  # type: ignore[attr-defined]
    return hook


def quiet_process() -> None:
    """Set up one process of a rayssl job: rayssl's lines on, the libraries' info logs, progress bars and
    known harmless warnings off (all kept with ``RAYSSL_VERBOSE=1``). The jobs call it; Ray runs it in every
    worker process of the job (``worker_process_setup_hook``)."""
    configure_logging()
    if verbose():
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray Train's placement-group cleaner asks the state API (the dashboard) every second whether the run's
    # controller lives; without a dashboard each try is a warning, and the sweep frees the groups itself
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    for name, _why in NOT_RUN_ERRORS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if not getattr(threading.excepthook, "_rayssl", False):
        threading.excepthook = _quiet_cleaner_threads(threading.excepthook)
    for message, category in HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category)
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(RAY_DATA_LOGGING))
    try:
        from ray.data import DataContext
        from ray.data._internal.logging import configure_logging as configure_ray_data

        configure_ray_data()  # again, in case ray.data was imported before the variable was set
        DataContext.get_current().enable_progress_bars = False
    except ImportError:
        return
    # Ray Train's worker logs every report ("Reporting training result N: TrainingReport(...)") to a logger
    # named by its file's path, outside ray.train's level; quiet that logger by its name (importing the
    # module to learn its path would cost every process Ray Train's imports)
    import ray

    path = Path(ray.__file__).parent / "train" / "v2" / "_internal" / "execution" / "context.py"
    logging.getLogger(str(path)).setLevel(logging.WARNING)
