"""A pool's entries: ``data.source`` as a list of SPECs, or a pool file (YAML) with one entry per source.

A pool file (``pool:FILE.yaml``, or a bare path ending in ``.yaml`` / ``.yml``)::

    sources:
      - source: msd:Task03_Liver        # relative paths: against the pool file's folder
        recipe: ct_btcv                 # optional: else data.recipe, else the source's own
        weight: 2                       # optional, > 0: its share of each epoch's crops
        limit: 100                      # optional, >= 1: at most this many of its training cases
        name: liver                     # optional: its case ids become liver.CASE
      - folder:/archive/ct              # a bare SPEC: an entry with only its source

A top-level list of entries is read the same way. The schema is strict: an unknown key, a missing ``source``,
a weight that is not a positive number or a limit that is not a positive integer is an error naming the file,
the entry and the key.
"""

from __future__ import annotations

import math
import posixpath
import re

import yaml

from rayssl.config import DataConfig
from rayssl.config.recipes import RECIPES
from rayssl.data.sources.base import PoolEntry
from rayssl.data.sources.safety import read_text
from rayssl.storage import absolute, is_uri, join_relative

POOL_KEYS = ("source", "recipe", "weight", "limit", "name")
NAME_FORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
"""A pool entry's name: a letter or digit, then letters, digits, ``_`` and ``-`` (no ``.``: it ends the prefix of
the case ids ``NAME.CASE``)."""
PATH_PREFIXES = ("msd", "folder", "csv", "cxr14", "dicom")


def pool_entries(data: DataConfig) -> tuple[list[PoolEntry], str]:
    """The entries of ``data.source`` (a pool) and where they come from (``data.source``, or the pool file).

    Raises:
        ValueError: ``data.source`` is one source, or the pool file is unreadable or breaks the schema.
    """
    if isinstance(data.source, list):
        return [PoolEntry(source=spec.strip()) for spec in data.source], "data.source"
    if not data.is_pool:
        raise ValueError(f"data.source={data.source!r} is one source, not a pool")
    spec = data.source.strip()
    path = absolute(spec[len("pool:"):] if spec.startswith("pool:") else spec)
    return read_pool_file(path), path


def read_pool_file(path: str) -> list[PoolEntry]:
    """The entries of the pool file at ``path`` (local or a URI), their relative paths resolved against its folder.

    Raises:
        ValueError: the file is missing or not YAML, or an entry breaks the schema (named: file, entry, key).
    """
    try:
        text = read_text(path)
    except ValueError as e:
        raise ValueError(f"pool file {path}: cannot be read ({e})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"pool file {path}: not valid YAML: {e}") from None
    if isinstance(doc, dict):
        unknown = sorted(set(doc) - {"sources"})
        if unknown:
            raise ValueError(f"pool file {path}: unknown key {unknown[0]!r} at the top level; expected 'sources'")
        doc = doc.get("sources")
    if not isinstance(doc, list) or not doc:
        raise ValueError(f"pool file {path}: expected 'sources:' with a list of entries (source, recipe, weight, "
                         f"limit, name), got {type(doc).__name__ if not isinstance(doc, list) else 'an empty list'}")
    folder = posixpath.dirname(path)
    entries = [_entry(item, f"pool file {path}, sources[{i}]", folder) for i, item in enumerate(doc)]
    unweighted = [i for i, e in enumerate(entries) if e.weight is None]
    if unweighted and len(unweighted) < len(entries):
        raise ValueError(f"pool file {path}, sources[{unweighted[0]}]: no weight, but other entries have one; give "
                         "every entry a weight, or none (crops in proportion to each source's cases)")
    return entries


def _entry(item, where: str, folder: str) -> PoolEntry:
    if isinstance(item, str):
        item = {"source": item}
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a SPEC or a mapping with keys {', '.join(POOL_KEYS)}, "
                         f"got {type(item).__name__}")
    unknown = [k for k in item if k not in POOL_KEYS]
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; expected {', '.join(POOL_KEYS)}")
    source = item.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"{where}: 'source' must be a SPEC such as msd:PATH, got {source!r}")
    recipe, weight, limit, name = (item.get(k) for k in ("recipe", "weight", "limit", "name"))
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"{where}: recipe {recipe!r} is not one of {', '.join(RECIPES)}")
    if weight is not None and not _positive(weight):
        raise ValueError(f"{where}: weight must be a number > 0, got {weight!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{where}: limit must be an integer >= 1, got {limit!r}")
    if name is not None and not (isinstance(name, str) and NAME_FORM.fullmatch(name)):
        raise ValueError(f"{where}: name {name!r} must be letters, digits, '_' and '-' (starting with a letter or "
                         "digit)")
    return PoolEntry(rebase(source.strip(), folder), recipe, None if weight is None else float(weight), limit, name)


def _positive(weight) -> bool:
    """A finite number > 0 (YAML 1.1 reads ``1e-3`` as text: a numeric text counts)."""
    if isinstance(weight, bool):
        return False
    try:
        value = float(weight)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and value > 0


def rebase(spec: str, folder: str) -> str:
    """``spec`` with its relative paths made relative to ``folder`` (the pool file's); absolute paths, ``~`` paths,
    URIs and ``synthetic:`` SPECs unchanged."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in PATH_PREFIXES:
        parts = rest.split(",") if prefix == "folder" else [rest]
        return f"{prefix}:" + ",".join(_path(p, folder) for p in parts)
    if sep and not is_uri(spec) and len(prefix) > 1:  # synthetic:, or a form resolve_source names as unknown
        return spec
    return _path(spec, folder)


def _path(path: str, folder: str) -> str:
    path = path.strip()
    if not path or path.startswith("~"):
        return path
    return join_relative(folder, path)


def derived_name(spec: str) -> str:
    """A short name for a source: ``synthetic:ct:8:7`` -> ``ct-8-7``; a path's folder or file name
    (``msd:/data/Task03_Liver`` -> ``Task03_Liver``, ``csv:/a/list.csv`` -> ``list``; a ``dataset.json`` or
    ``Data_Entry_2017.csv``: its folder's name)."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "synthetic":
        base = rest.replace(":", "-")
    else:
        path = (rest.partition(",")[0] if sep and prefix in PATH_PREFIXES else spec).rstrip("/")
        base = posixpath.basename(path)
        stem = re.sub(r"\.(json|csv|ya?ml)$", "", base, flags=re.IGNORECASE)
        base = posixpath.basename(posixpath.dirname(path)) if stem in ("dataset", "Data_Entry_2017") else stem
    return re.sub(r"[^A-Za-z0-9_-]+", "-", base).strip("-_") or "source"


def name_entries(entries: list[PoolEntry], origin: str) -> list[PoolEntry]:
    """``entries`` with every name set: given names kept (two entries with one name are an error), the others
    derived from their SPECs (:func:`derived_name`), made unique with ``-2``, ``-3``... suffixes."""
    given = [e.name for e in entries if e.name]
    twice = sorted({n for n in given if given.count(n) > 1})
    if twice:
        raise ValueError(f"pool {origin}: two entries are named {twice[0]!r}; every source of a pool needs its own "
                         "name")
    taken, named = set(given), []
    for e in entries:
        name = e.name
        if not name:
            base = name = derived_name(e.source)
            suffix = 1
            while name in taken:
                suffix += 1
                name = f"{base}-{suffix}"
            taken.add(name)
        named.append(PoolEntry(e.source, e.recipe, e.weight, e.limit, name))
    return named
