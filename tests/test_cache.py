import os
import tracemalloc

import numpy as np
import pytest

from rayssl.config import DataConfig
from rayssl.data.cache import (CachedVolumes, cached_files, case_file, read_case, read_manifest, read_volumes,
                               write_case, write_json)
from rayssl.data.crops import epoch_batches


def _rows(n=10, dtype=np.float32):
    # whole volumes: each case has its own shape
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        shape = (6 + i % 3, 5, 4 + i % 2)
        rows.append({
            "image": rng.standard_normal((2, *shape)).astype(dtype),
            "label": rng.integers(0, 5, shape).astype(np.uint8),
            "case_id": f"src.case {i}/{'ü' * (i % 2)}",
            "split": "train",
            "affine": np.diag([1.5, 1.5, 2.0, 1.0]),
            "target": None,
        })
    return rows


def _manifest(out, splits):
    # what prepare() writes last: the manifest that makes the folder a cache
    write_json(str(out), "manifest.json", {"format": "rayssl-volumes/2", "splits": splits})


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_roundtrip_bit_identical_and_memory_mapped(tmp_path, dtype):
    rows = _rows(dtype=dtype)
    names = [write_case(str(tmp_path), "train", r) for r in rows]
    assert sorted(os.listdir(tmp_path / "train")) == sorted(names) and len(set(names)) == len(rows)
    for name, ref in zip(names, rows):
        back = read_case(str(tmp_path / "train" / name))
        assert set(back) == {"image", "label", "case_id", "split", "affine"}  # None values are left out
        assert back["case_id"] == ref["case_id"]
        assert back["image"].dtype == ref["image"].dtype and back["image"].shape == ref["image"].shape
        assert back["image"].tobytes() == ref["image"].tobytes()  # bit-identical
        np.testing.assert_array_equal(back["label"], ref["label"])
        assert back["label"].dtype == np.uint8
        np.testing.assert_array_equal(back["affine"], ref["affine"])
        # zero-copy: a read-only view of the mapped file, not an array of its own
        assert not back["image"].flags.writeable and not back["image"].flags.owndata
    only = read_case(str(tmp_path / "train" / names[0]), ("case_id", "image"))
    assert set(only) == {"case_id", "image"}


def test_case_file_names_are_safe_and_distinct():
    ids = ["a/b", "a_b", "a b", "../x", "ü", "", "p.1.2.840.113619"]
    names = [case_file(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert all(n.endswith(".arrow") and "/" not in n and not n.startswith(".") for n in names)
    assert case_file("p.1.2") == case_file("p.1.2")  # stable: a re-run finds the same file


def test_interrupted_write_is_not_a_case(tmp_path):
    name = write_case(str(tmp_path), "train", _rows(1)[0])
    (tmp_path / "train" / f".{name}.deadbeef.tmp").write_bytes(b"ARROW1 half")  # a write killed midway
    assert cached_files(str(tmp_path), "train") == {name}
    assert cached_files(str(tmp_path), "val") == set()


def test_file_uri_roundtrip(tmp_path):
    row = _rows(1)[0]
    uri = f"file://{tmp_path}"
    name = write_case(uri, "val", row)
    assert cached_files(uri, "val") == {name}
    back = read_case(f"{uri}/val/{name}")  # read whole, as from a bucket
    assert back["image"].tobytes() == row["image"].tobytes()


def test_manifest_errors(tmp_path):
    with pytest.raises(ValueError, match="not a volume cache: manifest.json not found"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(str(tmp_path))
    _manifest(tmp_path, {"train": {"cases": 1, "files": ["a.arrow"]}, "val": {"cases": 0, "files": []}})
    assert read_manifest(str(tmp_path / "manifest.json"))["splits"]["train"]["cases"] == 1
    with pytest.raises(ValueError, match="no split 'test'; available: train, val"):
        read_volumes(str(tmp_path), "test")
    with pytest.raises(ValueError, match="split 'val' has no cases"):
        read_volumes(str(tmp_path), "val")


def test_old_parquet_cache_is_refused_with_the_command_that_rebuilds_it(tmp_path):
    write_json(str(tmp_path), "manifest.json", {"format": "rayssl-volumes/1", "source": "msd:/data/Task09_Spleen",
                                                "data": {"source": "msd:/data/Task09_Spleen", "recipe": "ct_btcv",
                                                         "spacing": [1.5, 1.5, 2.0]}})
    with pytest.raises(ValueError) as e:
        read_manifest(str(tmp_path))
    assert str(e.value) == (
        f"cache {str(tmp_path)!r} has format 'rayssl-volumes/1', not 'rayssl-volumes/2' (one memory-mapped Arrow file "
        f"per case); rebuild it with: python jobs/prepare_data.py --source 'msd:/data/Task09_Spleen' --out {tmp_path} "
        "data.recipe=\"ct_btcv\" data.spacing=[1.5,1.5,2.0]")


def test_cached_volumes_split_between_workers(tmp_path):
    rows = _rows(7)
    names = [write_case(str(tmp_path), "train", r) for r in rows]
    _manifest(tmp_path, {"train": {"cases": 7, "files": names}})
    volumes = read_volumes(str(tmp_path), "train", columns=["case_id", "image"])
    assert volumes.cases() == 7
    shares = [[r["case_id"] for r in volumes.epoch_rows(rank, 3)()] for rank in range(3)]
    # every 3rd from the rank-th, the same number each, the remainder (7 = 2 x 3 + 1) left out
    assert shares == [[rows[i]["case_id"] for i in range(rank, 6, 3)] for rank in range(3)]
    assert set(next(iter(volumes.epoch_rows(0, 1)()))) == {"case_id", "image"}
    with pytest.raises(ValueError, match=r"its 'train' cases have no target \(.*\.arrow\); prepare a cache of labelled"):
        read_volumes(str(tmp_path), "train", columns=["case_id", "image", "target"])
    weighted = CachedVolumes(volumes.root, volumes.files, ("case_id",), ((0, 0), (1, 0), (0, 1)))
    assert weighted.cases() == 3
    assert list(weighted.epoch_rows(0, 1)()) == [{"case_id": rows[0]["case_id"]}, {"case_id": rows[1]["case_id"]},
                                                 {"case_id": rows[0]["case_id"], "repeat": 1}]


def _peak_bytes_of_an_epoch(volumes: CachedVolumes, data: DataConfig) -> int:
    tracemalloc.start()
    try:
        for _ in epoch_batches(volumes.epoch_rows(0, 1)(), data, 0, 4, ["image"]):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_a_cache_holds_memory_flat_whatever_its_size(tmp_path):
    """Streaming 4x the volumes must not raise the peak of Python and NumPy allocations (the volumes are mapped
    from their files, one at a time; only the mixing buffer's crops are held)."""
    rng = np.random.default_rng(0)
    names = [write_case(str(tmp_path), "train", {"case_id": f"c{i}", "image": rng.random((1, 48, 48, 48), np.float32)})
             for i in range(48)]
    data = DataConfig(roi=(16, 16, 16), patches_per_volume=2)
    small = _peak_bytes_of_an_epoch(CachedVolumes(str(tmp_path / "train"), tuple(names[:12])), data)
    large = _peak_bytes_of_an_epoch(CachedVolumes(str(tmp_path / "train"), tuple(names)), data)
    volume = 48**3 * 4
    print(f"peak traced memory: 12 volumes {small / 2**20:.2f} MiB, 48 volumes {large / 2**20:.2f} MiB")
    assert large <= 1.2 * small
    assert large < 12 * volume  # fewer bytes than the small pool's volumes: they are not all held at once
