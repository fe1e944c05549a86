"""What a listing is made of: :class:`Case`, :class:`Source`, a pool's :class:`PoolEntry`, the strict-mode error,
and the small helpers every format's lister shares (file stems, repeated case ids, SPEC errors)."""

from __future__ import annotations

import logging
import posixpath
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

SPEC_FORMS = (
    "synthetic:ct[:N[:SEED]]", "synthetic:mri[:N[:SEED]]", "synthetic:cxr[:N[:SEED]]", "msd:PATH (folder with dataset.json, or the json)",
    "folder:IMAGES[,LABELS]", "csv:FILE.csv", "cxr14:PATH", "dicom:FOLDER (one case per series)",
    "PATH (auto-detected)",
)  # fmt: skip
NIFTI = (".nii.gz", ".nii")
IMAGE_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class QuarantineError(ValueError):
    """Strict mode: some inputs could not be used; the message lists each path and reason."""


def listing_message(what: str, entries: list[tuple[str, str]]) -> str:
    """``what: N unusable input(s) (strict mode):`` and one ``path: reason`` line each."""
    lines = "\n".join(f"  {path}: {reason}" for path, reason in entries)
    return f"{what}: {len(entries)} unusable input(s) (strict mode):\n{lines}"


@dataclass
class Case:
    """One input: image file(s), optional label, split and grouping key."""

    case_id: str
    image: list[str]
    label: str | None = None
    split: str = "train"
    """``"train"``, ``"val"`` or ``"test"``."""
    subject: str = ""
    """Grouping key for the k-fold split (defaults to ``case_id``)."""
    target: list[float] | None = None
    """Multi-hot findings (2D CXR); ``None`` for volumes."""
    kind: str = "file"
    """``file`` (NIfTI / image files, several = channels) or ``dicom`` (``image``: the slices of one series)."""
    recipe: str | None = None
    """The recipe this case is preprocessed with (a pool's case: its source's); ``None``: the run's."""

    def __post_init__(self):
        self.subject = self.subject or self.case_id


@dataclass(frozen=True)
class PoolEntry:
    """One source of a pool (:mod:`.pool`): a pool file's entry, or one SPEC of a ``data.source`` list."""

    source: str
    """The source's SPEC (relative paths already resolved against the pool file's folder)."""
    recipe: str | None = None
    """Its recipe; ``None``: ``data.recipe``, else the source's own."""
    weight: float | None = None
    """Its share of each epoch's crops, relative to the other entries' weights; ``None``: by its cases."""
    limit: int | None = None
    """At most this many of its training cases (a seeded draw)."""
    name: str | None = None
    """The prefix of its case ids (``NAME.CASE``); ``None``: derived from the SPEC."""


@dataclass
class Source:
    """A listed dataset: its cases and what is known about it without decoding any volume."""

    kind: str
    root: str
    cases: list[Case]
    spatial_dims: int
    channels: int | None
    """Input channels; ``None`` until :func:`resolve_source` reads them from the first usable case's header."""
    recipe: str
    labels: dict[int, str] = field(default_factory=dict)
    modality: dict[int, str] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    """The folders every listed file must lie in (default: ``[root]``; a folder source: images and labels)."""
    pool: list[PoolEntry] = field(default_factory=list)
    """A pool's entries, in order, with their names and recipes resolved; empty for one source."""

    def __post_init__(self):
        self.roots = self.roots or [self.root]

    def split(self, name: str) -> list[Case]:
        """The cases of one split."""
        return [c for c in self.cases if c.split == name]


def bad_spec(spec: str, why: str) -> ValueError:
    return ValueError(f"data.source {spec!r}: {why}; accepted forms: {', '.join(SPEC_FORMS)}")


def stem(path: str) -> str:
    """A file's name without its image extension (``.nii.gz``, ``.png``, ...)."""
    name = posixpath.basename(path.rstrip("/"))
    for ext in NIFTI + IMAGE_2D:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def is_nifti(path: str) -> bool:
    return path.lower().endswith(NIFTI)


def unique_id(case_id: str, seen: Counter, where: str) -> str:
    """``case_id``, or ``case_id_N`` for its N-th repeat in one listing (one warning per listing, at the first
    repeat; copies of one file are counted when the source is resolved, :func:`~.splits.group_copies`)."""
    seen[case_id] += 1
    if seen[case_id] == 1:
        return case_id
    seen[None] += 1  # repeats so far (no case id is None)
    if seen[None] == 1:
        log.warning("%s: case id %r listed %d times; this one is %s_%d (later repeats of any id are renamed the "
                    "same way, without a warning each)", where, case_id, seen[case_id], case_id, seen[case_id] - 1)
    return f"{case_id}_{seen[case_id] - 1}"
