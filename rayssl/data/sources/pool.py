"""``resolve_pool``: a pool of sources for pre-training (:mod:`.pool_file`) resolved into one :class:`~.base.Source`,
so the rest of the pipeline reads it as it reads one source.

Each entry is listed by :func:`~.resolve.resolve_source` with the run's folds, ``val_fold``, ``test_fold`` and seed,
exactly as a fine-tuning run on that source splits it, and only its training cases pre-train: a pool may hold the
downstream task's own source without its validation or test cases entering pre-training. With
``data.val_fold=all`` (cross-validation, every fold validates once) every case outside ``data.test_fold`` (and the
source's own test list) is a training case. Test cases are left out of the pool's listing altogether, and a
training case that is a copy (the same file, or the same bytes) of another entry's validation or test case is
left out too.

Case ids and subjects become ``NAME.CASE``; each case carries its recipe (:attr:`~.base.Case.recipe`); the pool's
sources must share one space: spatial dims, channels, intensity scale and spacing, checked here, before Ray
starts, with an error naming the source. How the sources share each epoch's crops is
:mod:`rayssl.data.pool_shares`.
"""

from __future__ import annotations

import logging

from rayssl.config import DataConfig
from rayssl.config.data import is_pool_spec
from rayssl.config.recipes import RECIPES
from rayssl.data.sources.base import Case, PoolEntry, QuarantineError, Source
from rayssl.data.sources.pool_file import name_entries, pool_entries
from rayssl.data.sources.resolve import resolve_source
from rayssl.data.sources.splits import file_keys, train_subset

log = logging.getLogger(__name__)

POOL = "pool"
"""``Source.kind`` of a pool."""


def resolve_pool(data: DataConfig) -> Source:
    """List every source of the pool ``data.source`` and join them into one :class:`Source` of kind ``pool``.

    Args:
        data: the data config; ``source`` is a list of SPECs or a pool file. The entries are listed with its
            ``folds``, ``val_fold``, ``test_fold``, ``seed``, ``channels``, ``synthetic_dir``, ``strict`` and
            ``allow_outside_root``.

    Returns:
        A source whose ``cases`` are the entries' training and validation cases (no test case), namespaced
        ``NAME.CASE``, each with its recipe (the entry's, else ``data.recipe``, else its source's own), the
        sources interleaved in each split; ``recipe``, ``channels`` and ``spatial_dims`` are the first entry's
        (the pool's common space); ``pool`` lists the entries with their names and recipes.

    Raises:
        ValueError: an entry is a pool or cannot be listed, has no training cases, or leaves the common space
            (other spatial dims, channels, intensity scale or default spacing; named).
        QuarantineError: ``data.strict`` and an entry lists files that are missing.
    """
    entries, origin = pool_entries(data)
    entries = name_entries(entries, origin)
    parts = [_list_entry(data, e, origin) for e in entries]
    entries = [PoolEntry(e.source, e.recipe or data.recipe or src.recipe, e.weight, e.limit, e.name)
               for e, src in zip(entries, parts)]
    check_common_space(data, entries, parts, origin)
    _drop_copies_of_held_out(entries, parts)
    for e, src in zip(entries, parts):
        train = src.split("train")
        if not train:
            raise ValueError(f"pool {origin}: source {e.name} ({e.source}) has no training cases left (data.folds="
                             f"{data.folds}, val_fold={data.val_fold}, test_fold={data.test_fold}); drop it")
        if e.limit is not None and e.limit < len(train):
            src.cases = train_subset(src.cases, e.limit, data.seed, e.source)
        for c in src.cases:
            c.case_id, c.subject, c.recipe = f"{e.name}.{c.case_id}", f"{e.name}.{c.subject}", e.recipe
    cases = [c for split in ("train", "val") for c in _interleave([src.split(split) for src in parts])]
    first = parts[0]
    return Source(POOL, origin, cases, first.spatial_dims, first.channels, entries[0].recipe,
                  modality=dict(first.modality), missing=[m for src in parts for m in src.missing],
                  roots=[r for src in parts for r in src.roots], pool=entries)


def _list_entry(data: DataConfig, e: PoolEntry, origin: str) -> Source:
    """One entry's source, split as a run on it alone splits it (``val_fold=all``: every case outside the test
    split trains)."""
    where = f"pool {origin}, source {e.name} ({e.source})"
    if is_pool_spec(e.source):
        raise ValueError(f"{where}: a pool lists sources, not pools")
    cross = data.val_fold == "all"
    # cross-validation: any fold but test_fold validates while listing; all of them train the pool
    val_fold = next(f for f in range(data.folds) if f != data.test_fold) if cross else data.val_fold
    try:
        src = resolve_source(data.model_copy(update={"source": e.source, "val_fold": val_fold, "train_cases": None}))
    except QuarantineError as err:
        raise QuarantineError(f"{where}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if cross:
        for c in src.cases:
            c.split = "test" if c.split == "test" else "train"
    return src


def check_common_space(data: DataConfig, entries: list[PoolEntry], parts: list[Source], origin: str) -> None:
    """The sources of a pool share one space: spatial dims, channels, intensity scale (:attr:`Recipe.intensity`)
    and spacing (``data.spacing``, else every recipe's default spacing); for ``sampling=genesis`` without
    ``data.genesis_threshold``, one HU window.

    Raises:
        ValueError: naming the first source (``NAME (SPEC)``) that leaves the first source's space.
    """
    first, base = entries[0], parts[0]
    r0 = RECIPES[first.recipe]
    for e, src in zip(entries, parts):
        where = f"pool {origin}: source {e.name} ({e.source})"
        if src.spatial_dims != base.spatial_dims:
            raise ValueError(f"{where} holds {src.spatial_dims}D images, the pool {base.spatial_dims}D (its first "
                             f"source, {first.name}); a pool's sources are all volumes or all 2D images")
        if src.channels != base.channels:
            raise ValueError(f"{where} has {src.channels} channels, the pool {base.channels} (its first source, "
                             f"{first.name}); drop it, or make a pool of sources with {base.channels} channel(s)")
        r = RECIPES[e.recipe]
        if r.spatial_dims not in (0, src.spatial_dims):
            raise ValueError(f"{where}: recipe {r.name!r} is for {r.spatial_dims}D images, the source is "
                             f"{src.spatial_dims}D")
        if r.intensity != r0.intensity:
            raise ValueError(f"{where} is preprocessed with recipe {r.name!r} (intensities: {r.intensity}), the pool "
                             f"with {r0.name!r} ({r0.intensity}); give its entry a recipe on the pool's scale or set "
                             "data.recipe")
        if data.spacing is None and r.spacing != r0.spacing:
            raise ValueError(f"{where}: recipe {r.name!r} resamples to {_spacing(r.spacing)}, recipe {r0.name!r} of "
                             f"{first.name} to {_spacing(r0.spacing)}; set data.spacing (e.g. "
                             "data.spacing=[1.5,1.5,2.0]) so every source is resampled to one spacing")
        if data.sampling == "genesis" and data.genesis_threshold is None and r.window != r0.window:
            raise ValueError(f"{where}: recipe {r.name!r} has another HU window than {r0.name!r}, so sampling=genesis "
                             "has no one intensity for data.genesis_hu; set data.genesis_threshold or one data.recipe")


def _spacing(spacing) -> str:
    return "the native spacing" if spacing is None else " x ".join(f"{v:g}" for v in spacing) + " mm"


def _drop_copies_of_held_out(entries: list[PoolEntry], parts: list[Source]) -> None:
    """Leave out of every entry the training cases whose image is a validation or test case's of any entry (the
    same file, or a copy: :func:`~.splits.file_keys`), then every test case; one warning per entry that lost
    training cases this way."""
    files = [c for src in parts for c in src.cases if c.kind == "file"]  # a DICOM series is no one file
    keys = file_keys([p for c in files for p in c.image])
    held = {keys[p] for c in files if c.split != "train" for p in c.image}
    for e, src in zip(entries, parts):
        copies = [c for c in src.cases
                  if c.split == "train" and c.kind == "file" and any(keys[p] in held for p in c.image)]
        if copies:
            log.warning("pool: source %s (%s): %d training case(s) left out, copies of another source's validation or "
                        "test cases (e.g. %s)", e.name, e.source, len(copies), copies[0].image[0])
        dropped = {id(c) for c in copies}
        src.cases = [c for c in src.cases if id(c) not in dropped and c.split != "test"]


def _interleave(groups: list[list[Case]]) -> list[Case]:
    """The cases of every group in one list, each group spread evenly over it (case ``j`` of a group of ``n`` at
    ``(j + 1/2) / n``; ties in group order), so a stream in the listing's order mixes the sources throughout."""
    keyed = [((j + 0.5) / len(g), i, j, c) for i, g in enumerate(groups) for j, c in enumerate(g)]
    return [c for *_, c in sorted(keyed, key=lambda k: k[:3])]

