"""The per-epoch read of kept volumes from Ray's object store.

A module of its own that imports only Ray: the Ray Data task that runs it every epoch starts in a fresh
worker process beside the training workers, and must not import torch or MONAI to hand on arrays.
"""

from __future__ import annotations

import ray


def kept_row(item: dict, volumes: list, columns: list[str]) -> list[dict]:
    """The ``columns`` of the volume ``volumes[item["index"]]`` (an object ref); none for an unusable case."""
    volume = ray.get(volumes[item["index"]])
    return [] if volume is None else [{k: volume[k] for k in columns}]
