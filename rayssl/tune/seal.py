"""Ray Tune's state files in a sweep directory, signed with a key kept outside the storage path.

Tune restores a sweep from pickles (``tuner.pkl``, the searcher's ``searcher-state-*.pkl``, the
cloudpickle inside ``experiment_state-*.json`` and ``search_gen_state-*.json``), and unpickling runs code:
anyone who can write the storage path could plant one. So rayssl signs every state file Tune writes,
as Tune writes it (HMAC-SHA256 of the sweep's name, the file's name and its bytes), in ``tune_state.seal``
(a name Tune's own sync never copies), and before a resume checks every top-level ``*.pkl`` and Tune
state file of the sweep against it: one that is unsigned or changed stops the resume before Tune opens
it. The key is ``RAYSSL_SWEEP_KEY`` if set (the same value on every machine that may resume a sweep),
else ``$XDG_CONFIG_HOME/rayssl/sweep.key`` (``~/.config/rayssl/sweep.key``), created 0600 on first use.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

KEY_ENV = "RAYSSL_SWEEP_KEY"
SEAL = "tune_state.seal"
STATE_FILES = ("*.pkl", "experiment_state-*.json", "search_gen_state-*.json", "basic-variant-state-*.json")
"""Top-level files of a sweep that Tune may unpickle on a resume (every ``*.pkl``, whatever its name)."""
KEEP = 16
"""Signatures kept per file: Tune uploads its state asynchronously, so storage may hold a version a few
saves older than the newest one signed."""
MAX_SEAL_BYTES = 16 << 20
"""A seal file larger than this is not read (it holds ``KEEP`` signatures per state file)."""


class UntrustedSweepState(ValueError):
    """A Tune state file of a sweep is not signed with this machine's sweep key: the sweep is not resumed."""


def key_file() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser() / "rayssl" / "sweep.key"


def sweep_key(create: bool = True) -> tuple[bytes | None, str]:
    """The signing key and where it comes from; with ``create``, a new random key file (0600) if there is none.

    Raises:
        ValueError: ``RAYSSL_SWEEP_KEY`` shorter than 16 characters, or a key file others may read or write.
    """
    if os.environ.get(KEY_ENV):
        if len(os.environ[KEY_ENV]) < 16:
            raise ValueError(f"{KEY_ENV} must hold at least 16 characters (a secret shared by the machines that "
                             "run and resume sweeps)")
        return os.environ[KEY_ENV].encode(), KEY_ENV
    path = key_file()
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        except FileExistsError:  # another process created it meanwhile
            pass
    if not path.is_file():
        return None, str(path)
    if path.stat().st_mode & 0o077:
        raise ValueError(f"sweep key {path} may be read or written by other users: chmod 600 {path}")
    return path.read_bytes().strip(), str(path)


def check_key_outside(storage_path: str | Path) -> None:
    """Refuse a key file that lies in the storage path it is meant to protect (whoever writes there could
    replace it)."""
    if not os.environ.get(KEY_ENV) and key_file().resolve().is_relative_to(Path(storage_path).resolve()):
        raise ValueError(f"the sweep key {key_file()} lies inside storage_path {storage_path}; set {KEY_ENV} or "
                         "XDG_CONFIG_HOME to keep it outside")


def state_files(folder: str | Path) -> list[str]:
    """The names of the top-level entries of ``folder`` that Tune may unpickle on a resume."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n != SEAL and any(fnmatch.fnmatch(n, p) for p in STATE_FILES))


def _mac(key: bytes, sweep: str, name: str, path: Path) -> str:
    """HMAC of the file's bytes, read in chunks (memory stays bounded whatever its size)."""
    h = hmac.new(key, f"{sweep}/{name}\0".encode(), hashlib.sha256)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_seal(sweep_dir: Path) -> dict[str, list[str]] | None:
    """The seal's signatures by file name, ``None`` when it is missing or not a seal."""
    path = sweep_dir / SEAL
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SEAL_BYTES:
            return None
        files = json.loads(path.read_bytes())["files"]
        return {k: [m for m in v if isinstance(m, str)] for k, v in files.items() if isinstance(v, list)}
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return None


def seal(sweep_dir: str | Path, source: str | Path | None = None, names: list[str] | None = None,
         seen: dict | None = None) -> None:
    """Sign the state files of ``source`` (Tune's local staging copy of the sweep; default the sweep itself)
    into ``<sweep_dir>/tune_state.seal``.

    Args:
        names: only these files (default: every state file of ``source``).
        seen: ``{name: (mtime, size)}`` of files already signed, updated; unchanged files are skipped.
    """
    sweep_dir = Path(sweep_dir)
    source = Path(source or sweep_dir)
    key, _ = sweep_key()
    files = _read_seal(sweep_dir) or {}
    changed = False
    for name in names or state_files(source):
        path = source / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or (seen is not None and seen.get(name) == (st.st_mtime_ns, st.st_size)):
            continue
        mac = _mac(key, sweep_dir.name, name, path)
        if seen is not None:
            seen[name] = (st.st_mtime_ns, st.st_size)
        if mac not in files.get(name, []):
            files[name] = [*files.get(name, []), mac][-KEEP:]
            changed = True
    if changed:
        tmp = sweep_dir / f".{SEAL}.{secrets.token_hex(4)}.tmp"
        tmp.write_text(json.dumps({"files": files}))
        os.replace(tmp, sweep_dir / SEAL)


def verify(sweep_dir: str | Path) -> None:
    """Check every state file of ``sweep_dir`` against its seal, before Tune reads any of them.

    Raises:
        UntrustedSweepState: naming the first file that is not a regular file, not signed, or changed since.
    """
    sweep_dir = Path(sweep_dir)
    names = state_files(sweep_dir)
    if not names:
        return
    key, where = sweep_key(create=False)
    files = _read_seal(sweep_dir)
    for name in names:
        path = sweep_dir / name
        if not stat.S_ISREG(path.lstat().st_mode):  # Tune writes none of these; a FIFO would hang the read
            why = "not a regular file but a link, FIFO, device or folder"
        elif key is None:
            why = f"no sweep key at {where} (nor {KEY_ENV}) to check it with"
        elif files is None:
            why = f"{SEAL} is missing or unreadable"
        elif name not in files:
            why = f"{SEAL} does not list it"
        elif _mac(key, sweep_dir.name, name, path) not in files[name]:
            why = f"it changed after rayssl signed it (key: {where})"
        else:
            continue
        raise UntrustedSweepState(
            f"{path}: Ray Tune would unpickle this file to resume the sweep, and it is not signed by rayssl ({why}). "
            f"The sweep is not resumed. If it was written with another key, set {KEY_ENV} to that key; otherwise "
            f"start a new sweep with another name= (and delete {sweep_dir} if you do not trust what is in it)")


def seal_callback():
    """A Tune callback that signs Tune's state files each time Tune saves them, in its local staging folder,
    before its background sync uploads them to the sweep directory."""
    from ray import tune

    class SealTuneState(tune.Callback):
        def __init__(self):
            self.staging = self.sweep = None
            self.seen: dict = {}

        def on_step_begin(self, iteration, trials, **info):
            if trials and self.staging is None:  # every trial shares the experiment's storage
                self.staging = trials[0].storage.experiment_driver_staging_path
                self.sweep = trials[0].storage.experiment_fs_path

        def on_step_end(self, iteration, trials, **info):
            self.on_step_begin(iteration, trials)
            self.get_state()  # the first save happens before any trial is known

        def get_state(self):
            """Tune calls this right after it wrote its state files; there is no state to save."""
            if self.staging is not None:
                seal(self.sweep, self.staging, seen=self.seen)
            return None

    return SealTuneState()


def no_pickled_errors() -> None:
    """Tune unpickles a failed trial's ``error.pkl`` from storage when it builds the results of ``fit``;
    read its ``error.txt`` (plain text, the same error) instead."""
    from ray.tune.experiment.trial import Trial

    Trial.get_pickled_error = lambda self: None
