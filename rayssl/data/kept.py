"""Kept volumes: a run's preprocessed training volumes in Ray's object store, read by the training workers.

The driver starts one Ray task per case (:func:`rayssl.data.pipeline.train_volumes`); the workers read their
share straight from the object store every epoch (``ray.get`` maps the arrays without copying them), so an
epoch starts without a Ray Data execution or a copy of the volumes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ray


@dataclass(frozen=True)
class KeptVolumes:
    """One Ray object ref per listed case to its preprocessed volume (a row dict, or ``None`` when the case
    was unusable and quarantined), and one to its count (1 or 0); ready once the case is preprocessed."""

    volumes: tuple
    usable: tuple
    items: tuple | None = None
    """The volumes an epoch streams, ``(index of the case, repeat)`` each: a pool's weights stream some cases more
    than once (:func:`rayssl.data.pool_shares.epoch_items`); ``None``: every case once, in the listing's order."""

    def counts(self) -> list[int]:
        """Each case's count, waiting for the preprocessing to finish."""
        return ray.get(list(self.usable))

    def _usable_items(self) -> list[tuple[int, int]]:
        counts = self.counts()
        items = self.items if self.items is not None else [(i, 0) for i in range(len(self.volumes))]
        return [(i, r) for i, r in items if counts[i]]

    def cases(self) -> int:
        """The volumes an epoch streams: the usable cases, each as many times as ``items`` lists it (waits for the
        preprocessing).

        Raises:
            ValueError: every case was unusable.
        """
        usable = self._usable_items()
        if not usable:
            raise ValueError(f"all {len(self.usable)} training cases were unusable (quarantined; see the warnings)")
        return len(usable)

    def epoch_rows(self, rank: int, world: int) -> Callable[[], Iterator[dict]]:
        """Worker ``rank`` of ``world``'s stream of volumes, one call per epoch, in the listing's (or ``items``')
        order: every ``world``-th usable volume from the ``rank``-th, all workers the same number (a remainder is
        left out, as Ray Data's equal split does). A repeat N > 0 of a case comes with ``"repeat": N``."""
        share: list = []

        def rows() -> Iterator[dict]:
            if not share:
                share.extend(worker_share(self._usable_items(), rank, world))
            return (_row(self.volumes[i], r) for i, r in share)

        return rows


def worker_share(items: list, rank: int, world: int) -> list:
    """Worker ``rank`` of ``world``'s share of an epoch's ``items``: every ``world``-th from the ``rank``-th, all
    workers the same number (a remainder is left out, as Ray Data's equal split does)."""
    return items[: len(items) // world * world][rank::world]


def _row(ref, repeat: int) -> dict:
    row = ray.get(ref)
    return {**row, "repeat": repeat} if repeat else row
