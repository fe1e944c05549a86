"""The Ray Data settings rayssl's datasets are created with.

A dataset keeps the ``DataContext`` that was current when it was created, so these settings apply
to the datasets built inside :func:`dataset_context` (and everything derived from them, also under
Ray Train) without changing the user's global context.

- ``op_resource_reservation_enabled=False``: Ray Data's per-operator reservation holds the readers
  to about one CPU on a small node (docs/data.md, "Ray Data settings"). Backpressure still bounds what is in
  flight by the object store budget. Setting ``RAY_DATA_ENABLE_OP_RESOURCE_RESERVATION`` in the
  environment restores Ray's choice.
"""

from __future__ import annotations

import contextlib
import os

import ray.data

RESERVATION_ENV = "RAY_DATA_ENABLE_OP_RESOURCE_RESERVATION"


@contextlib.contextmanager
def dataset_context():
    """Create datasets inside this block to give them rayssl's Ray Data settings."""
    settings = {}
    if RESERVATION_ENV not in os.environ:
        settings["op_resource_reservation_enabled"] = False
    ctx = ray.data.DataContext.get_current()
    settings = {k: v for k, v in settings.items() if hasattr(ctx, k)}  # attributes of this Ray version only
    old = {k: getattr(ctx, k) for k in settings}
    for k, v in settings.items():
        setattr(ctx, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(ctx, k, v)
