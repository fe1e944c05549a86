"""Files of a run (metrics, previews, exported weights, result) in a local or remote run directory.

Files are written to a local folder: the run directory itself when it is local, otherwise a
staging folder that ``sync()`` uploads to the ``s3://`` / ``gs://`` run directory and that is
removed when the ``RunFiles`` object goes away.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs

from rayssl.storage import is_uri, open_uri
from rayssl.train.layout import RunDir

PACKAGES = ("rayssl", "torch", "ray", "deepspeed", "monai", "timm", "numpy", "nibabel")


def provenance() -> dict:
    """The versions of rayssl and the libraries that decide its results, and the git commit when rayssl
    runs from a checkout (``None`` otherwise)."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    checkout = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"versions": versions, "git_commit": commit, "git_dirty": dirty}


class RunFiles:
    """The run directory as seen by the driver or by the rank-0 worker."""

    def __init__(self, run_dir: str, pull_metrics: bool = False):
        self.run_dir = str(run_dir)
        self.remote = is_uri(self.run_dir)
        self.local = Path(tempfile.mkdtemp(prefix="rayssl-run-")) if self.remote else Path(self.run_dir)
        if self.remote:
            weakref.finalize(self, shutil.rmtree, self.local, ignore_errors=True)
        self.local.mkdir(parents=True, exist_ok=True)
        if self.remote and pull_metrics:  # a resumed run appends to the metrics already uploaded
            fs, root = open_uri(self.run_dir)
            src = f"{root.rstrip('/')}/{RunDir.METRICS}"
            if fs.get_file_info(src).type == pafs.FileType.File:
                with fs.open_input_stream(src) as f:
                    (self.local / RunDir.METRICS).write_bytes(f.read())

    def path(self, rel: str) -> Path:
        p = self.local / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def log_metrics(self, record: dict) -> None:
        """Append ``record`` to ``metrics.jsonl`` and rewrite ``metrics.csv`` from it (keys may vary
        between rows, e.g. per-worker columns after a resume on another number of workers)."""
        with self.path(RunDir.METRICS).open("a") as f:
            f.write(json.dumps(record) + "\n")
        pd.read_json(self.path(RunDir.METRICS), lines=True).to_csv(self.path(RunDir.METRICS_CSV), index=False)

    def keep_metrics_until(self, step: int) -> None:
        """Drop the metric lines of steps after ``step`` (a resume from the checkpoint at ``step`` logs them
        again), so ``metrics.jsonl`` holds each step once after any number of resumes."""
        path = self.local / RunDir.METRICS
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            path.write_text("".join(line + "\n" for line in kept))
            if kept:
                pd.read_json(path, lines=True).to_csv(self.path(RunDir.METRICS_CSV), index=False)

    def write_json(self, rel: str, obj) -> Path:
        p = self.path(rel)
        p.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))
        return p

    def glob(self, pattern: str) -> list[str]:
        """The files written so far that match ``pattern`` (e.g. ``previews/*.png``), as sorted relative paths."""
        return sorted(p.relative_to(self.local).as_posix() for p in self.local.glob(pattern))

    def uri(self, rel: str) -> str:
        return f"{self.run_dir.rstrip('/')}/{rel}" if self.remote else str(self.local / rel)

    def sync(self) -> None:
        """Upload the staged files (no-op for a local run directory)."""
        if self.remote:
            fs, root = open_uri(self.run_dir)
            fs.create_dir(root, recursive=True)  # a no-op on object stores
            pafs.copy_files(str(self.local), root, destination_filesystem=fs)
