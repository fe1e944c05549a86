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

    def counts(self) -> list[int]:
        """Each case's count, waiting for the preprocessing to finish."""
        return ray.get(list(self.usable))

    def cases(self) -> int:
        """The usable cases (waits for the preprocessing).

        Raises:
            ValueError: every case was unusable.
        """
        usable = sum(self.counts())
        if usable == 0:
            raise ValueError(f"all {len(self.usable)} training cases were unusable (quarantined; see the warnings)")
        return usable

    def epoch_rows(self, rank: int, world: int) -> Callable[[], Iterator[dict]]:
        """Worker ``rank`` of ``world``'s stream of volumes, one call per epoch, in the listing's order: every
        ``world``-th usable case from the ``rank``-th, all workers the same number (a remainder is left out,
        as Ray Data's equal split does)."""
        share: list = []

        def rows() -> Iterator[dict]:
            if not share:
                ok = [v for v, n in zip(self.volumes, self.counts()) if n]
                share.extend(ok[: len(ok) // world * world][rank::world])
            return (ray.get(ref) for ref in share)

        return rows
