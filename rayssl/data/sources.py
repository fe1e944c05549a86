"""Data sources: turn a ``data.source`` SPEC into a list of cases with splits, without decoding volumes.

SPEC forms: ``synthetic:ct|mri|cxr[:N[:SEED]]``, ``msd:PATH``, ``folder:IMAGES[,LABELS]``, ``csv:FILE.csv``,
``cxr14:PATH``, or a bare PATH (auto-detected). Paths may be local or ``s3://`` / ``gs://`` / ``file://``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import posixpath
import stat
from urllib.parse import unquote, urlsplit
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from rayssl.config import DataConfig
from rayssl.data.io import BadInput, absolute, exists, is_dir, is_uri, nifti_shape, open_uri, read_bytes, special_kind
from rayssl.data.synthetic import CXR_FINDINGS, ensure_synthetic

log = logging.getLogger(__name__)

SPEC_FORMS = (
    "synthetic:ct[:N[:SEED]]", "synthetic:mri[:N[:SEED]]", "synthetic:cxr[:N[:SEED]]", "msd:PATH (folder with dataset.json, or the json)",
    "folder:IMAGES[,LABELS]", "csv:FILE.csv", "cxr14:PATH", "dicom:FOLDER (one case per series)",
    "PATH (auto-detected)",
)  # fmt: skip
SYNTHETIC_DEFAULT_N = {"ct": 8, "mri": 6, "cxr": 64}
CXR14_CLASSES = list(CXR_FINDINGS)
_MRI_NAMES = {"MRI", "MR", "FLAIR", "T1", "T1W", "T1GD", "T1C", "T2", "T2W", "ADC", "DWI", "PD"}
_NIFTI = (".nii.gz", ".nii")
_IMAGE_2D = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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

    def __post_init__(self):
        self.subject = self.subject or self.case_id


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

    def __post_init__(self):
        self.roots = self.roots or [self.root]

    def split(self, name: str) -> list[Case]:
        """The cases of one split."""
        return [c for c in self.cases if c.split == name]


# --------------------------------------------------------------------------- helpers


def _join(base: str, rel: str) -> str:
    """``rel`` relative to folder ``base``; absolute paths and URIs are kept."""
    rel = rel.strip()
    if is_uri(rel) or posixpath.isabs(rel):
        return rel
    if rel.startswith("./"):
        rel = rel[2:]
    return posixpath.join(base, rel) if is_uri(base) else posixpath.normpath(posixpath.join(base, rel))


def _stem(path: str) -> str:
    name = posixpath.basename(path.rstrip("/"))
    for ext in _NIFTI + _IMAGE_2D:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _read_text(path: str, root: str | None = None) -> str:
    """A manifest's UTF-8 text; with ``root``, a manifest that leads out of it (a symlink) is refused unopened."""
    if root is not None and outside_root(path, [root]):
        real = os.path.realpath(_local_path(path) or path)
        raise ValueError(f"{path}: a symlink that leads outside the dataset root {root} (to {real}); set "
                         "data.allow_outside_root=true to read it")
    try:
        return read_bytes(path).decode("utf-8-sig")
    except BadInput as e:
        raise ValueError(f"{path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file (undecodable byte at offset {e.start})") from None


def _list_dir(folder: str) -> list[str] | None:
    """Files directly in ``folder`` (full paths, sorted), or None if it is not a directory."""
    fs, p = open_uri(folder)
    import pyarrow.fs as pafs

    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return None
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
    return [_join(folder, n) for n in names if not n.startswith(".")]  # skips macOS "._x.nii.gz" files


def _is_nifti(path: str) -> bool:
    return path.lower().endswith(_NIFTI)


def _local_path(path: str) -> str | None:
    """The local file system path of a local path or a ``file://`` URI; ``None`` for other URIs."""
    if not is_uri(path):
        return path
    parts = urlsplit(path)
    return unquote(parts.path) if parts.scheme == "file" and not parts.netloc else None


def outside_root(path: str, roots: list[str]) -> bool:
    """Whether ``path`` lies outside every folder of ``roots``: ``..`` out of it, an absolute path or a URI
    elsewhere, or a symlink that leads out of it (local paths and ``file://`` URIs are compared resolved)."""
    for root in roots:
        local_root, local = _local_path(root), _local_path(path)
        if local_root is not None and local is not None:
            base, real = os.path.realpath(local_root), os.path.realpath(local)
            if os.path.commonpath([base, real]) == base:
                return False
            continue
        if not (is_uri(root) and is_uri(path)):
            continue
        r, p = urlsplit(root), urlsplit(path)
        base = posixpath.normpath("/" + r.path.strip("/"))
        inner = posixpath.normpath("/" + p.path.lstrip("/"))
        if (r.scheme, r.netloc) == (p.scheme, p.netloc) and (inner + "/").startswith(base.rstrip("/") + "/"):
            return False
    return True


def _keep_inside(cases: list[Case], roots: list[str], missing: list[tuple[str, str]]) -> list[Case]:
    """Move cases with a file outside ``roots`` to ``missing`` (reason ``outside the dataset root``), before
    anything reads or even lists it."""
    kept = []
    for c in cases:
        out = [p for p in [*c.image, *([c.label] if c.label else [])] if outside_root(p, roots)]
        if out:
            missing.extend((p, f"outside the dataset root ({', '.join(roots)}); set data.allow_outside_root=true "
                               "to read it") for p in out)
        else:
            kept.append(c)
    return kept


def _keep_existing(cases: list[Case], missing: list[tuple[str, str]]) -> list[Case]:
    """Move cases whose image or label file does not exist, or is a FIFO, device or socket, to ``missing``.

    Each parent folder is listed once (one request per folder on object stores, not one per file).
    """
    listed: dict[str, set[str]] = {}

    def present(path: str) -> bool:
        folder = posixpath.dirname(path)
        if folder not in listed:
            files = _list_dir(folder) if is_dir(folder) else None
            listed[folder] = {posixpath.basename(f) for f in files or []}
        return posixpath.basename(path) in listed[folder] or (not listed[folder] and exists(path))

    kept = []
    for c in cases:
        absent = [p for p in [*c.image, *([c.label] if c.label else [])] if not present(p)]
        if absent:
            missing.extend((p, f"not a regular file ({kind}): never opened" if (kind := special_kind(p)) else "file not found")
                           for p in absent)
        else:
            kept.append(c)
    return kept


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


COPY_SAMPLE = 4096
"""Bytes read at the start, middle and end of each local image file whose size another listed image shares, to
find copies among a source's cases; only files whose samples all agree are then read whole (SHA-256)."""


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


def _file_keys(paths: list[str]) -> dict[str, str]:
    """``{path: key}``, one key per distinct content: local files by resolved path, then, among files of one
    size, by :data:`COPY_SAMPLE`-byte samples and SHA-256; other URIs by their path. Empty, special and
    unreadable files keep their own key (reading them quarantines them later)."""
    keys, by_size = {}, defaultdict(set)
    for p in set(paths):
        local = _local_path(p)
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


def _group_copies(cases: list[Case], where: str) -> None:
    """Cases that list the same image file, or a copy of one (:func:`_file_keys`), share one subject (the
    smallest of theirs), and an unsplit one takes its copies' explicit split, so copies never straddle splits;
    one warning with their count."""
    files = [c for c in cases if c.kind == "file"]  # a DICOM series' subject is its patient already
    keys = _file_keys([p for c in files for p in c.image])
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


CHANNEL_SAMPLE = 64
"""Headers read to find a folder or CSV source's channel count (the most common one)."""


def _volume_channels(path: str) -> int | None:
    """Channels of a NIfTI file from its header (its 4th dimension, 1 for 3D); ``None`` if unreadable (the
    file is quarantined later, when decoded)."""
    try:
        shape = nifti_shape(path)
    except BadInput:
        return None
    shape = shape[:4] + tuple(d for d in shape[4:] if d != 1)  # trailing singleton dims
    return int(shape[3]) if len(shape) >= 4 else 1


def _majority_channels(cases: list[Case]) -> int:
    """The most common channel count among (up to :data:`CHANNEL_SAMPLE`, evenly spread) cases' first files."""
    step = max(1, len(cases) // CHANNEL_SAMPLE)
    counts = Counter(c for c in (_volume_channels(case.image[0]) for case in cases[::step]) if c is not None)
    return counts.most_common(1)[0][0] if counts else 1


# --------------------------------------------------------------------------- listers


def _msd(path: str, allow_outside: bool = False) -> Source:
    json_path = path if path.lower().endswith(".json") else _join(path, "dataset.json")
    root = posixpath.dirname(json_path) if is_uri(json_path) else posixpath.dirname(posixpath.abspath(json_path))
    try:
        meta = json.loads(_read_text(json_path, None if allow_outside else root))
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{json_path}: not valid JSON: nested too deeply") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{json_path}: expected an MSD dataset.json object, got {type(meta).__name__}")
    for key in ("training", "test"):
        if not isinstance(meta.get(key) or [], list):
            raise ValueError(f"{json_path}: '{key}' must be a list, got {type(meta[key]).__name__}")
    modality = _index_map(meta.get("modality") or {"0": "unknown"}, json_path, "modality")
    labels = _index_map(meta.get("labels") or {}, json_path, "labels")
    cases, seen = [], Counter()
    for key in ("training", "test"):
        for i, item in enumerate(meta.get(key) or []):
            images = item.get("image") if isinstance(item, dict) else item if key == "test" else None
            images = images if isinstance(images, list) else [images]
            label = item.get("label") if isinstance(item, dict) and key == "training" else None
            if not images or not all(isinstance(p, str) and p.strip() for p in images) or \
                    (label is not None and not (isinstance(label, str) and label.strip())):
                raise ValueError(f"{json_path}: {key}[{i}] must be {'an object with' if key == 'training' else 'a path or an object with'} "
                                 f"'image' (a path or a list of paths){' and an optional label path' if key == 'training' else ''}, "
                                 f"got {_shown(item)}")
            images = [_join(root, p) for p in images]
            case_id = _unique(_stem(images[0]), seen, json_path)
            cases.append(Case(case_id, images, _join(root, label) if label else None, split="" if key == "training" else "test"))
    names = {v.upper() for v in modality.values()}
    recipe = "ct_btcv" if names == {"CT"} else "mri_brats" if names and names <= _MRI_NAMES else "none"
    return Source("msd", root, cases, 3, len(modality), recipe, labels, modality, [], [])


def _shown(value) -> str:
    """A manifest value as JSON for an error message, at most 200 characters."""
    try:
        return json.dumps(value)[:200]
    except (RecursionError, ValueError):
        return f"a deeply nested {type(value).__name__}"


def _index_map(value, where: str, key: str) -> dict[int, str]:
    """An MSD ``{"0": "CT", ...}`` mapping as ``{0: "CT"}``; a clear error naming the file and key otherwise."""
    try:
        out = {int(k): str(v) for k, v in value.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{where}: '{key}' must map integer indices to names, e.g. {{\"0\": \"CT\"}}, got "
                         f"{_shown(value)}") from None
    if any(k < 0 for k in out):
        raise ValueError(f"{where}: '{key}' indices must be >= 0, got {sorted(out)}")
    return out


def _unique(case_id: str, seen: Counter, where: str) -> str:
    """``case_id``, or ``case_id_N`` for its N-th repeat in one listing (one warning per listing, at the first
    repeat; copies of one file are counted when the source is resolved, :func:`_group_copies`)."""
    seen[case_id] += 1
    if seen[case_id] == 1:
        return case_id
    seen[None] += 1  # repeats so far (no case id is None)
    if seen[None] == 1:
        log.warning("%s: case id %r listed %d times; this one is %s_%d (later repeats of any id are renamed the "
                    "same way, without a warning each)", where, case_id, seen[case_id], case_id, seen[case_id] - 1)
    return f"{case_id}_{seen[case_id] - 1}"


def _folder(spec: str) -> Source:
    images_dir, _, labels_dir = spec.partition(",")
    files = _list_dir(images_dir)
    if files is None:
        raise ValueError(f"folder:{spec}: {images_dir!r} is not a directory")
    if labels_dir and not is_dir(labels_dir):
        raise ValueError(f"folder:{spec}: labels folder {labels_dir!r} is not a directory")
    cases = []
    for f in files:
        if _is_nifti(f):
            label = _join(labels_dir, posixpath.basename(f)) if labels_dir else None
            cases.append(Case(_stem(f), [f], label, split=""))
    if not cases:
        raise ValueError(f"folder:{spec}: no .nii/.nii.gz files in {images_dir!r}")
    roots = [images_dir, labels_dir] if labels_dir else [images_dir]
    return Source("folder", images_dir, cases, 3, None, "none", {}, {}, [], [], roots)


def _csv_rows(path: str, root: str | None) -> list[dict]:
    """The rows of a CSV manifest (:func:`_read_text`); a clear error naming the file when it is not CSV."""
    try:
        return list(csv.DictReader(io.StringIO(_read_text(path, root))))
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from None


def _csv(path: str, allow_outside: bool = False) -> Source:
    root = posixpath.dirname(path) if is_uri(path) else posixpath.dirname(posixpath.abspath(path))
    rows = _csv_rows(path, None if allow_outside else root)
    header = list(rows[0].keys()) if rows else []
    if "image" not in header:
        raise ValueError(f"{path}: CSV needs an 'image' column (optional: label, split, subject), got {header}")
    cases, seen = [], Counter()
    for i, row in enumerate(rows, start=2):
        images = [_join(root, p) for p in (row.get("image") or "").split(";") if p.strip()]
        if not images:
            raise ValueError(f"{path}: line {i}: empty 'image'")
        split = (row.get("split") or "").strip().lower()
        if split not in ("", "train", "val", "test"):
            raise ValueError(f"{path}: line {i}: split must be train, val or test, got {split!r}")
        cid = _unique((row.get("case_id") or "").strip() or _stem(images[0]), seen, path)
        label = _join(root, row["label"]) if (row.get("label") or "").strip() else None
        cases.append(Case(cid, images, label, split, (row.get("subject") or "").strip()))
    two_d = bool(cases) and cases[0].image[0].lower().endswith(_IMAGE_2D)
    if two_d:
        return Source("csv", root, cases, 2, 1, "cxr", {}, {}, [], [])
    channels = len(cases[0].image) if cases and len(cases[0].image) > 1 else None  # one file: from its header
    return Source("csv", root, cases, 3, channels, "none", {}, {}, [], [])


def _dicom(path: str, allow_outside: bool = False) -> Source:
    """A folder tree of DICOM files: one unlabelled case per series (:mod:`rayssl.data.dicom`)."""
    from rayssl.data.dicom import list_series

    if is_uri(path):
        raise ValueError(f"dicom:{path}: DICOM series are read from a local (or mounted) folder")
    series, bad = list_series(path, allow_outside)
    if not series:
        raise ValueError(f"dicom:{path}: no DICOM series below the folder"
                         + (f" ({len(bad)} unusable file(s), e.g. {bad[0][0]}: {bad[0][1]})" if bad else ""))
    cases, seen = [], Counter()
    for uid, s in sorted(series.items(), key=lambda kv: (kv[1]["patient"], kv[1]["number"], kv[0])):
        name = "_".join(p for p in (s["patient"], s["number"]) if p) or uid
        case_id = _unique("".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name), seen, path)
        cases.append(Case(case_id, sorted(s["files"]), None, split="", subject=s["patient"], kind="dicom"))
    modalities = {s["modality"].upper() for s in series.values()}
    recipe = "ct_btcv" if modalities == {"CT"} else "mri_brats" if modalities == {"MR"} else "none"
    return Source("dicom", path, cases, 3, 1, recipe, {}, {}, [], bad)


def _cxr14_image_dirs(root: str) -> dict[str, str]:
    """``{image name: folder}`` for the Kaggle layout ``images_001/images/...``; {} when ``images/`` exists."""
    if is_dir(_join(root, "images")):
        return {}
    where = {}
    for sub in sorted(posixpath.basename(f.rstrip("/")) for f in _subdirs(root)):
        if sub.startswith("images_"):
            folder = _join(_join(root, sub), "images")
            where.update({posixpath.basename(f): folder for f in _list_dir(folder) or []})
    return where


def _subdirs(folder: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, p = open_uri(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False, allow_not_found=True))
    return [_join(folder, i.base_name) for i in infos if i.type == pafs.FileType.Directory]


def _cxr14(path: str, allow_outside: bool = False) -> Source:
    """ChestX-ray14: ``Data_Entry_2017.csv``, images in ``images/`` (or Kaggle's ``images_NNN/images/``).

    Images named in neither ``train_val_list.txt`` nor ``test_list.txt`` (when those exist) are skipped.
    An unknown finding name puts the image into ``missing`` with the reason naming the finding.
    """
    root = posixpath.dirname(path) if path.lower().endswith(".csv") else path
    entry = path if path.lower().endswith(".csv") else _join(root, "Data_Entry_2017.csv")
    rows = _csv_rows(entry, None if allow_outside else root)
    need = {"Image Index", "Finding Labels", "Patient ID"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{entry}: expected ChestX-ray14 columns {sorted(need)}")
    lists = {}
    for name, split in (("train_val_list.txt", ""), ("test_list.txt", "test")):
        p = _join(root, name)
        if exists(p) or special_kind(p):  # a FIFO is refused by read_bytes, not taken for an absent list
            lists.update({line.strip(): split for line in _read_text(p, None if allow_outside else root).splitlines()
                          if line.strip()})
    index = {n: i for i, n in enumerate(CXR14_CLASSES)}
    folders = _cxr14_image_dirs(root)
    cases, missing = [], []
    for row in rows:
        name = row["Image Index"].strip()
        if lists and name not in lists:
            continue  # listed in neither split file
        found = [f.strip() for f in row["Finding Labels"].split("|") if f.strip() and f.strip() != "No Finding"]
        unknown = [f for f in found if f not in index]
        image = _join(folders.get(name) or _join(root, "images"), name)
        if unknown:
            missing.append((image, f"unknown finding {', '.join(unknown)}"))
            continue
        target = [0.0] * len(CXR14_CLASSES)
        for f in found:
            target[index[f]] = 1.0
        cases.append(Case(_stem(name), [image], None, lists.get(name, ""), row["Patient ID"].strip(), target))
    return Source("cxr14", root, cases, 2, 1, "cxr", {}, {}, list(CXR14_CLASSES), missing)


# --------------------------------------------------------------------------- entry point


def _bad_spec(spec: str, why: str) -> ValueError:
    return ValueError(f"data.source {spec!r}: {why}; accepted forms: {', '.join(SPEC_FORMS)}")


def _detect(path: str, spec: str, allow_outside: bool = False) -> Source:
    if path.lower().endswith(".json"):
        return _msd(path, allow_outside)
    if posixpath.basename(path) == "Data_Entry_2017.csv":
        return _cxr14(path, allow_outside)
    if path.lower().endswith(".csv"):
        if not exists(path):
            raise _bad_spec(spec, "file does not exist")
        return _csv(path, allow_outside)
    files = _list_dir(path)
    if files is None:
        raise _bad_spec(spec, "path does not exist" if not exists(path) else "cannot tell the source type")
    names = {posixpath.basename(f) for f in files}
    if "dataset.json" in names:
        return _msd(path, allow_outside)
    if "Data_Entry_2017.csv" in names:
        return _cxr14(path, allow_outside)
    if any(_is_nifti(f) for f in files):
        return _folder(path)
    raise _bad_spec(spec, "directory has no dataset.json, Data_Entry_2017.csv or .nii/.nii.gz files")


def _synthetic(rest: str, data: DataConfig, spec: str) -> Source:
    kind, _, rest = rest.partition(":")
    n, _, seed = rest.partition(":")
    if kind not in SYNTHETIC_DEFAULT_N:
        raise _bad_spec(spec, f"unknown synthetic kind {kind!r}")
    try:
        count = int(n) if n else SYNTHETIC_DEFAULT_N[kind]
    except ValueError:
        raise _bad_spec(spec, f"N must be an integer, got {n!r}") from None
    try:  # the generator's seed; default data.seed (a pool generated with another seed shares no phantom)
        gen_seed = int(seed) if seed else data.seed
    except ValueError:
        raise _bad_spec(spec, f"SEED must be an integer, got {seed!r}") from None
    if count < (2 if kind == "cxr" else 1):
        raise _bad_spec(spec, f"N must be >= {2 if kind == 'cxr' else 1}, got {count}")
    root = str(ensure_synthetic(kind, count, gen_seed, data.synthetic_dir))
    return _cxr14(root) if kind == "cxr" else _msd(root)


def resolve_source(data: DataConfig) -> Source:
    """List the cases of ``data.source`` and assign splits.

    Args:
        data: the data config; uses ``source``, ``seed``, ``folds``, ``val_fold``, ``test_fold``,
            ``synthetic_dir``.

    Returns:
        A :class:`Source`. Listed files that do not exist are in ``source.missing`` with reason
        ``"file not found"``, not in ``source.cases``; so are ChestX-ray14 images with an unknown
        finding name (reason ``"unknown finding NAME"``). Folder and CSV sources of volumes default
        to recipe ``"none"`` (set ``data.recipe``); MSD picks ``ct_btcv`` for CT, ``mri_brats`` for MRI.
        Cases that list the same image file or a copy of it share a subject, hence a split.

    Raises:
        ValueError: unknown SPEC form, missing path, malformed dataset.json / CSV, a manifest that is a
            symlink leading out of the dataset root.
    """
    spec = data.source.strip()
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "synthetic":
        src = _synthetic(rest, data, spec)
    elif sep and prefix in ("msd", "folder", "csv", "cxr14", "dicom"):
        if not rest:
            raise _bad_spec(spec, "missing path")
        rest = ",".join(absolute(p) for p in rest.split(",")) if prefix == "folder" else absolute(rest)
        first = rest.partition(",")[0]
        if special_kind(first):
            raise _bad_spec(spec, f"{first!r} is {special_kind(first)}, not a file or folder")
        if not (is_dir(first) or exists(first)):
            raise _bad_spec(spec, f"path {first!r} does not exist")
        listers = {"msd": _msd, "csv": _csv, "cxr14": _cxr14, "dicom": _dicom}
        src = _folder(rest) if prefix == "folder" else listers[prefix](rest, data.allow_outside_root)
    elif sep and not is_uri(spec) and len(prefix) > 1:
        raise _bad_spec(spec, f"unknown source type {prefix!r}")
    else:
        src = _detect(absolute(spec), spec, data.allow_outside_root)
    if not data.allow_outside_root:
        src.cases = _keep_inside(src.cases, src.roots, src.missing)
    src.cases = _keep_existing(src.cases, src.missing)
    if data.strict and src.missing:  # known at listing time: fail before anything is processed
        raise QuarantineError(listing_message(f"source {data.source!r}", src.missing))
    if data.channels is not None:
        src.channels = data.channels
    elif src.channels is None:
        src.channels = _majority_channels(src.cases)
    if data.val_fold == "all":
        raise ValueError("data.val_fold=all is cross-validation: one fine-tuning run per fold (jobs/finetune.py), "
                         "not a split of one source listing")
    _group_copies(src.cases, spec)
    assign_splits(src.cases, data.folds, data.val_fold, data.test_fold, data.seed)
    if data.train_cases is not None:
        src.cases = _train_subset(src.cases, data.train_cases, data.subset_seed, spec)
    return src


def _train_subset(cases: list[Case], n: int, seed: int, spec: str) -> list[Case]:
    """Keep ``n`` training cases drawn with ``seed`` (independent of the case order), and every other split."""
    train = sorted((c for c in cases if c.split == "train"), key=lambda c: c.case_id)
    if n > len(train):
        raise ValueError(f"data.train_cases={n} but source {spec!r} has only {len(train)} training cases")
    keep = {train[i].case_id for i in np.random.default_rng([seed, 0x5E7]).permutation(len(train))[:n]}
    return [c for c in cases if c.split != "train" or c.case_id in keep]
