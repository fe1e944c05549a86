"""How the sources of a pool share each epoch's crops.

Every volume an epoch streams gives ``patches_per_case`` crops, so a source's share of the crops is its share of
the volumes streamed. Without weights every training case is streamed once an epoch: a source's share follows its
cases (one source's behaviour). With weights (a pool file's ``weight:``) some cases are streamed more than once an
epoch, each time with other crops (:func:`rayssl.data.crops.case_crops` seeds a repeat apart):

* the source with the most cases per unit of weight, ``k = max(n_s / w_s)``, is streamed once: every source
  ``s`` gets ``T_s = round(w_s * k)`` volumes an epoch (at least its ``n_s`` cases, so every case is seen every
  epoch; smaller sources are up-sampled, never a large one down-sampled);
* a source's ``T_s`` volumes are dealt as evenly as its cases allow: ``T_s // n_s`` repeats each, one more for
  ``T_s % n_s`` of them drawn with ``data.seed``;
* rounding ``T_s`` to a whole volume is the only departure from the weights (at most half a volume per source),
  besides what every epoch has: quarantined cases and the remainder the equal split between workers leaves out.

The volumes of an epoch are ordered with every source spread evenly over it, so batches mix the sources.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from rayssl.config import DataConfig
from rayssl.data.sources import Case, Source


def _by_source(source: Source, cases: list[Case]) -> dict[str, list[int]]:
    """``{entry name: indices into cases}`` in the pool's order (a pool's case id is ``NAME.CASE``)."""
    out: dict[str, list[int]] = {e.name: [] for e in source.pool}
    for i, c in enumerate(cases):
        out[c.case_id.partition(".")[0]].append(i)
    return out


def weighted(source: Source) -> bool:
    """Whether ``source`` is a pool whose entries carry sampling weights."""
    return any(e.weight is not None for e in source.pool)


def check_streamable(data: DataConfig, source: Source) -> None:
    """Raise ``ValueError`` for a pool with weights whose volumes are preprocessed every epoch
    (``data.keep_volumes=false``): the weights repeat kept or cached volumes."""
    if weighted(source) and data.keep_volumes is False:
        raise ValueError(f"pool {source.root}: its weights stream some cases more than once an epoch, from the volumes "
                         "kept in Ray's object store or cached, but data.keep_volumes=false streams every case once: set "
                         "data.keep_volumes=auto or drop the weights")


def case_repeats(source: Source, cases: list[Case], seed: int) -> list[int]:
    """How many times each of ``cases`` (a pool's training cases) is streamed an epoch (see the module docstring).

    Raises:
        ValueError: some entries of the pool have a weight and others not.
    """
    if not weighted(source):
        return [1] * len(cases)
    missing = [e.name for e in source.pool if e.weight is None]
    if missing:
        raise ValueError(f"pool {source.root}: source {missing[0]} has no weight but others have; give every entry "
                         "a weight, or none (crops in proportion to the cases)")
    groups = {name: idx for name, idx in _by_source(source, cases).items() if idx}
    weight = {e.name: e.weight for e in source.pool}
    k = max(len(idx) / weight[name] for name, idx in groups.items())
    repeats = [0] * len(cases)
    for order, (name, idx) in enumerate(groups.items()):
        total = max(len(idx), int(np.floor(weight[name] * k + 0.5)))
        base, extra = divmod(total, len(idx))
        more = set(np.random.default_rng([seed, 0x9001, order]).permutation(len(idx))[:extra].tolist())
        for j, i in enumerate(idx):
            repeats[i] = base + (j in more)
    return repeats


def epoch_items(source: Source, cases: list[Case], seed: int) -> tuple[tuple[int, int], ...] | None:
    """The volumes an epoch streams, ``(index into cases, repeat)`` each, every source spread evenly over the
    epoch and a case's repeats apart; ``None`` when every case is streamed once in the listing's order (one source,
    or a pool without weights: its listing is interleaved already)."""
    if not weighted(source):
        return None
    repeats = case_repeats(source, cases, seed)
    keyed = []
    for order, idx in enumerate(i for i in _by_source(source, cases).values() if i):
        items = sorted(((r, j) for j, i in enumerate(idx) for r in range(repeats[i])))  # rounds over the cases
        keyed += [((n + 0.5) / len(items), order, idx[j], r) for n, (r, j) in enumerate(items)]
    return tuple((i, r) for *_, i, r in sorted(keyed))


def crop_shares(source: Source, cases: list[Case], seed: int) -> dict[str, float]:
    """Each source's share of an epoch's crops (as listed, before quarantine)."""
    repeats = case_repeats(source, cases, seed)
    per: dict[str, int] = defaultdict(int)
    for c, r in zip(cases, repeats):
        per[c.case_id.partition(".")[0]] += r
    total = sum(per.values()) or 1
    return {e.name: per[e.name] / total for e in source.pool}


def describe_pool(source: Source, cases: list[Case], seed: int) -> str:
    """One line for the run's log: ``pool: 3 sources, 120 training cases; crop shares liver 50%, ct 30%, pacs
    20%`` (with weights, also the repeats and the volumes an epoch)."""
    shares = crop_shares(source, cases, seed)
    line = (f"pool: {len(source.pool)} sources, {len(cases)} training cases; crop shares "
            + ", ".join(f"{name} {share:.0%}" for name, share in shares.items()))
    if weighted(source):
        repeats = case_repeats(source, cases, seed)
        line += (f" (weights: each case streamed {min(repeats)}-{max(repeats)}x an epoch, {sum(repeats)} volumes "
                 "an epoch)")
    return line
