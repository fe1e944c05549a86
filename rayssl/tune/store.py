"""A store of pre-trained encoders shared by the trials of a sweep (or of many sweeps).

Mask ratio is a pre-training parameter, the others are fine-tuning parameters. Each trial asks the store
for the encoder of its pre-training config; an identical pre-training (same preset, data, mask-ratio
bucket, seed and every other field that changes the weights) is reused, otherwise it is trained once.

Layout: ``<root>/<key>/`` is the pre-training run directory, ``<root>/<key>.json`` the entry written
(atomically) when it finished. Concurrent trials never pre-train the same key twice: a named Ray actor
(:class:`StoreLock`) grants one lease per key. A lease expires when its holder stops renewing it (the
trial died), and the next trial resumes that pre-training from its last checkpoint. The actor lives in
the Ray cluster, so the lock works across nodes; the store directory must be shared storage (NFS or
``s3://`` / ``gs://``) for entries written on one node to be seen on another.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from rayssl.config import PretrainConfig, dump_config
from rayssl.train.layout import RunDir

NAMESPACE = "rayssl"
RESULT_NEUTRAL = ("run", "preset")
"""Pre-training fields that do not change the weights: where the run lives, how often it logs and
checkpoints (``run``) and the preset's name (its values are in the other fields)."""


def bucket_mask_ratio(ratio: float, width: float = 0.05) -> float:
    """Round ``ratio`` to the nearest multiple of ``width``.

    Raises:
        ValueError: ``width`` not in (0, 0.5) or the bucket falls outside (0, 1).
    """
    if not 0 < width < 0.5:
        raise ValueError(f"mask bucket width must be in (0, 0.5), got {width}")
    bucket = round(round(ratio / width) * width, 6)
    if not 0 < bucket < 1:
        raise ValueError(f"mask_ratio {ratio} rounds to {bucket} with bucket width {width}; "
                         "it must stay strictly between 0 and 1")
    return bucket


def bucketed(cfg: PretrainConfig, width: float) -> PretrainConfig:
    """A copy of ``cfg`` whose MAE mask ratio is bucketed (Genesis configs are returned unchanged)."""
    if cfg.model.method != "mae":
        return cfg
    out = cfg.model_copy(deep=True)
    out.model.mask_ratio = bucket_mask_ratio(cfg.model.mask_ratio, width)
    return out


def store_key(cfg: PretrainConfig) -> str:
    """Readable, content-addressed name of a pre-training: preset, method, mask ratio, seed, config hash.

    The hash covers every field except :data:`RESULT_NEUTRAL`, so a different data source, ROI, epoch
    count or any other value gives another key.
    """
    data = {k: v for k, v in dump_config(cfg).items() if k not in RESULT_NEUTRAL}
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    mask = f"-m{cfg.model.mask_ratio:.2f}" if cfg.model.method == "mae" else ""
    return f"{cfg.preset or 'custom'}-{cfg.model.method}{mask}-s{cfg.seed}-{digest}"


class StoreLock:
    """Leases on store keys, held in one named actor (create it with :func:`store_lock`)."""

    def __init__(self, ttl_s: float = 120.0):
        self.ttl_s = ttl_s
        self.leases: dict[str, tuple[str, float]] = {}  # key -> (token, expiry)
        self.grants: dict[str, int] = {}

    def acquire(self, key: str, token: str) -> bool:
        now = time.monotonic()
        held = self.leases.get(key)
        if held is None or held[0] == token or held[1] < now:
            self.leases[key] = (token, now + self.ttl_s)
            self.grants[key] = self.grants.get(key, 0) + 1
            return True
        return False

    def renew(self, key: str, token: str) -> bool:
        held = self.leases.get(key)
        if held is None or held[0] != token:
            return False
        self.leases[key] = (token, time.monotonic() + self.ttl_s)
        return True

    def release(self, key: str, token: str) -> None:
        if self.leases.get(key, ("",))[0] == token:
            del self.leases[key]

    def stats(self) -> dict[str, int]:
        """How many leases were granted per key (a key granted twice was resumed after its holder died)."""
        return dict(self.grants)


def store_lock(root: str, ttl_s: float = 120.0):
    """The lock actor of the store at ``root``: found by name in the cluster, created if missing.

    It is not detached: it lives as long as the process that first created it (the sweep driver, which
    creates it before any trial starts). Trials look it up with the same call.
    """
    import ray

    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    actor = ray.remote(num_cpus=0)(StoreLock)  # one call at a time: acquire is check-then-set
    return actor.options(name=f"rayssl-store-lock-{digest}", namespace=NAMESPACE, get_if_exists=True).remote(ttl_s)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class PretrainStore:
    """Get-or-pretrain encoders by config.

    Args:
        root: store directory (local; on a multi-node cluster a shared mount).
        bucket: mask-ratio bucket width.
        ttl_s: lease time; a holder renews its lease every ``ttl_s / 4`` seconds while it pre-trains.
        poll_s: how often a waiting trial checks whether the pre-training it needs has finished.
    """

    def __init__(self, root: str | Path, bucket: float = 0.05, ttl_s: float = 120.0, poll_s: float = 2.0):
        if ttl_s <= 0 or poll_s <= 0:
            raise ValueError(f"ttl_s and poll_s must be > 0, got {ttl_s}, {poll_s}")
        self.root = Path(root).expanduser().resolve()
        self.bucket, self.ttl_s, self.poll_s = bucket, ttl_s, poll_s
        bucket_mask_ratio(0.5, bucket)  # validates the width

    def entry(self, key: str) -> dict | None:
        """The finished entry of ``key`` (``weights``, ``run_dir``, ``config``, ``wall_time_s``), else ``None``."""
        path = self.root / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def get_or_pretrain(self, cfg: PretrainConfig, pretrain_fn: Callable[[PretrainConfig], str] | None = None,
                        lock=None) -> dict:
        """The encoder for ``cfg`` (mask ratio bucketed): reused from the store or pre-trained now.

        Args:
            cfg: the trial's pre-training config.
            pretrain_fn: ``cfg -> run_dir`` whose ``result.json`` names the exported ``weights``
                (default :func:`rayssl.pretrain.driver.pretrain`).
            lock: a :class:`StoreLock` actor handle (default :func:`store_lock` of this root).

        Returns:
            The store entry plus ``key``, ``reused`` (no pre-training in this call) and ``waited_s``.
        """
        if pretrain_fn is None:
            from rayssl.pretrain.driver import pretrain as pretrain_fn
        import ray

        cfg = bucketed(cfg, self.bucket)
        key = store_key(cfg)
        lock = lock or store_lock(str(self.root), self.ttl_s)
        token, t0 = uuid.uuid4().hex, time.perf_counter()
        while True:
            found = self.entry(key)
            if found is not None:
                return {**found, "key": key, "reused": True, "waited_s": time.perf_counter() - t0}
            if ray.get(lock.acquire.remote(key, token)):
                break
            time.sleep(self.poll_s)
        try:
            found = self.entry(key)  # finished between our check and the lease
            if found is not None:
                return {**found, "key": key, "reused": True, "waited_s": time.perf_counter() - t0}
            stop = threading.Event()

            def heartbeat():
                while not stop.wait(self.ttl_s / 4):
                    lock.renew.remote(key, token)

            beat = threading.Thread(target=heartbeat, daemon=True)
            beat.start()
            try:
                run_cfg = cfg.model_copy(deep=True)
                run_cfg.run.name, run_cfg.run.storage_path = key, str(self.root)  # same name: resumes
                started = time.perf_counter()
                run_dir = pretrain_fn(run_cfg)
                result = json.loads((Path(run_dir) / RunDir.RESULT).read_text())
                entry = {"weights": result["weights"], "run_dir": str(run_dir), "config": dump_config(cfg),
                         "wall_time_s": time.perf_counter() - started, "finished": time.time()}
                self.root.mkdir(parents=True, exist_ok=True)
                _write_atomic(self.root / f"{key}.json", json.dumps(entry, indent=1))
            finally:
                stop.set()
        finally:
            ray.get(lock.release.remote(key, token))
        return {**entry, "key": key, "reused": False, "waited_s": time.perf_counter() - t0 - entry["wall_time_s"]}
