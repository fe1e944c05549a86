"""Pre-trained encoder store: mask-ratio buckets, keys, leases, and one pre-training per bucket under concurrency."""

import json
import time

import pytest

from rayssl.config import PretrainConfig, load_config
from rayssl.tune.store import PretrainStore, StoreLock, bucket_mask_ratio, bucketed, store_key


def tiny(*overrides) -> PretrainConfig:
    return load_config(PretrainConfig, "pretrain", "tiny", overrides=list(overrides))


def test_bucket_rounds_to_nearest_multiple():
    assert bucket_mask_ratio(0.74) == 0.75 and bucket_mask_ratio(0.7749) == 0.75 and bucket_mask_ratio(0.776) == 0.8
    assert bucket_mask_ratio(0.61, 0.1) == 0.6 and bucket_mask_ratio(0.66, 0.1) == 0.7
    with pytest.raises(ValueError, match="mask_ratio 0.99 rounds to 1.0"):
        bucket_mask_ratio(0.99)
    with pytest.raises(ValueError, match="bucket width must be in"):
        bucket_mask_ratio(0.5, 0.0)


def test_key_covers_result_changing_fields_only():
    base = store_key(bucketed(tiny("model.mask_ratio=0.74"), 0.05))
    assert base == store_key(bucketed(tiny("model.mask_ratio=0.76"), 0.05))  # same bucket
    assert base.startswith("custom-mae-m0.75-s0-")
    assert base == store_key(bucketed(tiny("model.mask_ratio=0.75", "run.name=x", "run.storage_path=/elsewhere",
                                           "run.log_every=1"), 0.05))
    for other in ("model.mask_ratio=0.7", "seed=1", "data.source=synthetic:ct:6", "epochs=3", "data.roi=[48,48,48]",
                  "optim.lr=1e-4", "scale.num_workers=2"):
        assert store_key(bucketed(tiny("model.mask_ratio=0.75", other), 0.05)) != base, other
    genesis = load_config(PretrainConfig, "pretrain", "tiny_genesis")
    assert store_key(bucketed(genesis, 0.05)).startswith("custom-genesis-s0-")


def test_lease_blocks_others_until_released_or_expired():
    lock = StoreLock(ttl_s=0.2)
    assert lock.acquire("k", "a") and not lock.acquire("k", "b") and lock.acquire("other", "b")
    assert lock.renew("k", "a") and not lock.renew("k", "b")
    lock.release("k", "b")  # not the holder: no effect
    assert not lock.acquire("k", "b")
    lock.release("k", "a")
    assert lock.acquire("k", "b")
    time.sleep(0.3)  # b stopped renewing (its trial died): the lease expires
    assert lock.acquire("k", "c")
    assert lock.stats() == {"k": 3, "other": 1}


def test_concurrent_trials_in_one_bucket_pretrain_once(ray_session, tmp_path):
    import ray

    @ray.remote(num_cpus=0)
    def trial(root: str, ratio: float, log: str, cfg: dict) -> dict:
        from pathlib import Path

        from rayssl.config import PretrainConfig
        from rayssl.tune.store import PretrainStore

        def fake_pretrain(c: PretrainConfig) -> str:  # a cheap stand-in with the same contract
            run = Path(c.run.storage_path) / c.run.name
            (run / "export").mkdir(parents=True, exist_ok=True)
            with open(log, "a") as f:
                f.write(f"{c.run.name} {c.model.mask_ratio}\n")
            time.sleep(1.0)
            (run / "export" / "encoder.safetensors").write_bytes(b"w")
            (run / "result.json").write_text(json.dumps({"weights": str(run / "export" / "encoder.safetensors")}))
            return str(run)

        c = PretrainConfig.model_validate(cfg)
        c.model.mask_ratio = ratio
        return PretrainStore(root, bucket=0.05, poll_s=0.1).get_or_pretrain(c, fake_pretrain)

    log = tmp_path / "calls.txt"
    cfg = tiny().model_dump(mode="json")
    root = str(tmp_path / "store")
    from rayssl.tune.store import store_lock

    lock = store_lock(str((tmp_path / "store").resolve()))  # as the sweep driver does, before the trials
    out = ray.get([trial.remote(root, r, str(log), cfg) for r in (0.74, 0.76, 0.751, 0.62)])
    calls = log.read_text().splitlines()
    assert sorted(calls) == sorted([f"{out[0]['key']} 0.75", f"{out[3]['key']} 0.6"])
    assert len({o["weights"] for o in out[:3]}) == 1 and out[3]["weights"] != out[0]["weights"]
    assert sum(not o["reused"] for o in out[:3]) == 1 and not out[3]["reused"]
    assert ray.get(lock.stats.remote())[out[0]["key"]] >= 1
    # a later trial finds the finished entry without pre-training or taking the lease
    again = PretrainStore(root, bucket=0.05).get_or_pretrain(tiny("model.mask_ratio=0.77"), lambda c: pytest.fail("re-trained"))
    assert again["reused"] and again["weights"] == out[0]["weights"]
    entry = json.loads((tmp_path / "store" / f"{out[0]['key']}.json").read_text())
    assert entry["config"]["model"]["mask_ratio"] == 0.75
