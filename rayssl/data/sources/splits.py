"""Splits: seeded k-fold by subject, copies of one image kept in one split, and the seeded training subset."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections import defaultdict

import numpy as np

from rayssl.data.sources.base import Case
from rayssl.data.sources.safety import local_path

log = logging.getLogger(__name__)

COPY_SAMPLE = 4096
"""Bytes read at the start, middle and end of each local image file whose size another listed image shares, to
find copies among a source's cases; only files whose samples all agree are then read whole (SHA-256)."""


def assign_splits(cases: list[Case], folds: int, val_fold: int, test_fold: int | None, seed: int) -> None:
    """Seeded k-fold by subject for the cases whose split is ``""`` (explicit splits are kept).

    Subjects are sorted, permuted with ``seed`` and dealt round-robin into ``folds`` folds; fold
    ``val_fold`` becomes "val", fold ``test_fold`` (if set) "test", the others "train". All cases of one
    subject land in the same fold.
    """
    todo = [c for c in cases if not c.split]
    subjects = sorted({c.subject for c in todo})
    order = np.random.default_rng(seed).permutation(len(subjects))
    fold_of = {subjects[i]: pos % folds for pos, i in enumerate(order)}
    for c in todo:
        f = fold_of[c.subject]
        c.split = "val" if f == val_fold else "test" if f == test_fold else "train"


def _digest(path: str, size: int, sampled: bool) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if sampled:
            for at in (0, size // 2, max(0, size - COPY_SAMPLE)):
                f.seek(at)
                h.update(f.read(COPY_SAMPLE))
        else:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
    return h.digest()


def file_keys(paths: list[str]) -> dict[str, str]:
    """``{path: key}``, one key per distinct content: local files by resolved path, then, among files of one
    size, by :data:`COPY_SAMPLE`-byte samples and SHA-256; other URIs by their path. Empty, special and
    unreadable files keep their own key (reading them quarantines them later)."""
    keys, by_size = {}, defaultdict(set)
    for p in set(paths):
        local = local_path(p)
        keys[p] = os.path.realpath(local) if local is not None else p
        try:
            st = os.stat(keys[p]) if local is not None else None
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size:
            by_size[st.st_size].add(keys[p])
    alias = {}
    for size, files in by_size.items():
        groups = [sorted(files)] if len(files) > 1 else []
        for sampled in (True, False) if size > COPY_SAMPLE else (True,):
            regrouped = []
            for group in groups:
                by_digest = defaultdict(list)
                for f in group:
                    try:
                        by_digest[_digest(f, size, sampled)].append(f)
                    except OSError:
                        pass
                regrouped += [g for g in by_digest.values() if len(g) > 1]
            groups = regrouped
        alias.update({f: g[0] for g in groups for f in g})
    return {p: alias.get(k, k) for p, k in keys.items()}


def group_copies(cases: list[Case], where: str) -> None:
    """Cases that list the same image file, or a copy of one (:func:`file_keys`), share one subject (the
    smallest of theirs), and an unsplit one takes its copies' explicit split, so copies never straddle splits;
    one warning with their count."""
    files = [c for c in cases if c.kind == "file"]  # a DICOM series' subject is its patient already
    keys = file_keys([p for c in files for p in c.image])
    parent: dict[str, str] = {}

    def find(s: str) -> str:
        while parent.get(s, s) != s:
            parent[s] = parent.get(parent[s], parent[s])  # path halving
            s = parent[s]
        return s

    owner, copies = {}, 0
    for c in files:
        shared = [owner[keys[p]] for p in c.image if keys[p] in owner]
        for p in c.image:
            owner.setdefault(keys[p], c.subject)
        for s in shared:
            a, b = find(s), find(c.subject)
            if a != b:
                parent[max(a, b)] = min(a, b)
        copies += bool(shared)
    if not copies:
        return
    explicit = defaultdict(set)
    for c in files:
        c.subject = find(c.subject)
        if c.split:
            explicit[c.subject].add(c.split)
    for c in files:
        if not c.split and len(explicit[c.subject]) == 1:
            c.split = next(iter(explicit[c.subject]))
    clash = sum(len(s) > 1 for s in explicit.values())
    log.warning("%s: %d case(s) list the same image file as an earlier case, or a copy of it; each shares that "
                "case's subject, so copies land in one split%s", where, copies,
                f" ({clash} group(s) of copies have different explicit splits, kept as listed)" if clash else "")


def train_subset(cases: list[Case], n: int, seed: int, spec: str) -> list[Case]:
    """Keep ``n`` training cases drawn with ``seed`` (independent of the case order), and every other split."""
    train = sorted((c for c in cases if c.split == "train"), key=lambda c: c.case_id)
    if n > len(train):
        raise ValueError(f"data.train_cases={n} but source {spec!r} has only {len(train)} training cases")
    keep = {train[i].case_id for i in np.random.default_rng([seed, 0x5E7]).permutation(len(train))[:n]}
    return [c for c in cases if c.split != "train" or c.case_id in keep]
