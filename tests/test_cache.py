import json
import os

import numpy as np
import pytest

from rayssl.data.cache import read_manifest, read_patches, write_json, write_patches


def _rows(n=10, dtype=np.float32):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.standard_normal((2, 6, 5, 4)).astype(dtype),
            "label": rng.integers(0, 5, (6, 5, 4)).astype(np.uint8),
            "case_id": f"case_{i % 3}",
            "split": "train",
            "origin": np.array([i, 0, 1], np.int64),
        }
        for i in range(n)
    ]


def _finish(out, counts):
    # what prepare() writes last: the manifest that makes the folder a cache
    write_json(str(out), "manifest.json", {"splits": counts, "roi": [6, 5, 4], "dtype": "float32"})


def test_roundtrip_bit_identical(ray_session, tmp_path):
    data = {"train": _rows(dtype=np.float32), "val": _rows(7, dtype=np.float16)}
    for split, rows in data.items():
        write_patches(ray_session.data.from_items(rows, override_num_blocks=3), str(tmp_path), split, rows_per_file=4)
        files = os.listdir(tmp_path / split)
        assert len(files) >= 2 and all(f.endswith(".parquet") for f in files)
    _finish(tmp_path, {split: {"patches": len(rows)} for split, rows in data.items()})

    for split, rows in data.items():
        back = read_patches(str(tmp_path), split).take_all()
        assert len(back) == len(rows)
        by_key = {(r["case_id"], tuple(r["origin"])): r for r in rows}
        for r in back:
            ref = by_key[(r["case_id"], tuple(r["origin"]))]
            assert r["image"].dtype == ref["image"].dtype and r["image"].shape == (2, 6, 5, 4)
            assert r["image"].tobytes() == ref["image"].tobytes()  # bit-identical
            np.testing.assert_array_equal(r["label"], ref["label"])

    ds = read_patches(str(tmp_path), "train")
    assert ds.context.use_datasource_v2 is False  # rayssl's settings (rayssl.data.context)
    batches = list(ds.select_columns(["image"]).iter_torch_batches(batch_size=4))
    assert sum(b["image"].shape[0] for b in batches) == len(data["train"])
    assert tuple(batches[0]["image"].shape[1:]) == (2, 6, 5, 4)


def test_rewrite_replaces_split(ray_session, tmp_path):
    ds = ray_session.data.from_items(_rows(6), override_num_blocks=2)
    write_patches(ds, str(tmp_path), "val", rows_per_file=2)
    write_patches(ds, str(tmp_path), "val", rows_per_file=2)  # a re-run must not append
    _finish(tmp_path, {"val": {"patches": 6}})
    assert read_patches(str(tmp_path), "val").count() == 6
    assert len(os.listdir(tmp_path / "val")) >= 3  # rows_per_file=2 bounds each file


def test_manifest_errors(tmp_path):
    with pytest.raises(ValueError, match="not a patch cache: manifest.json not found"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(str(tmp_path))
    write_json(str(tmp_path), "manifest.json", {"splits": {"train": {"patches": 3}, "val": {"patches": 0}}})
    assert read_manifest(str(tmp_path / "manifest.json"))["splits"]["train"]["patches"] == 3
    with pytest.raises(ValueError, match="no split 'test'; available: train, val"):
        read_patches(str(tmp_path), "test")
    with pytest.raises(ValueError, match="split 'val' has no patches"):
        read_patches(str(tmp_path), "val")
    assert json.loads((tmp_path / "manifest.json").read_text())["splits"]["val"] == {"patches": 0}


def test_write_patches_rejects_bad_rows_per_file(tmp_path):
    with pytest.raises(ValueError, match="rows_per_file must be >= 1"):
        write_patches(None, str(tmp_path), "train", rows_per_file=0)
