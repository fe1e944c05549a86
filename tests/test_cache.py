import json
import os

import numpy as np
import pytest

from rayssl.data.cache import read_manifest, read_volumes, write_json, write_volumes


def _rows(n=10, dtype=np.float32):
    # whole volumes: each case has its own shape
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        shape = (6 + i % 3, 5, 4 + i % 2)
        rows.append({
            "image": rng.standard_normal((2, *shape)).astype(dtype),
            "label": rng.integers(0, 5, shape).astype(np.uint8),
            "case_id": f"case_{i}",
            "split": "train",
            "affine": np.diag([1.5, 1.5, 2.0, 1.0]),
        })
    return rows


def _finish(out, counts):
    # what prepare() writes last: the manifest that makes the folder a cache
    write_json(str(out), "manifest.json", {"splits": counts, "dtype": "float32"})


def test_roundtrip_bit_identical(ray_session, tmp_path):
    data = {"train": _rows(dtype=np.float32), "val": _rows(7, dtype=np.float16)}
    for split, rows in data.items():
        write_volumes(ray_session.data.from_items(rows, override_num_blocks=3), str(tmp_path), split, rows_per_file=4)
        files = os.listdir(tmp_path / split)
        assert len(files) >= 2 and all(f.endswith(".parquet") for f in files)
    _finish(tmp_path, {split: {"cases": len(rows)} for split, rows in data.items()})

    for split, rows in data.items():
        back = read_volumes(str(tmp_path), split).take_all()
        assert len(back) == len(rows)
        by_key = {r["case_id"]: r for r in rows}
        for r in back:
            ref = by_key[r["case_id"]]
            assert r["image"].dtype == ref["image"].dtype and r["image"].shape == ref["image"].shape
            assert r["image"].tobytes() == ref["image"].tobytes()  # bit-identical
            np.testing.assert_array_equal(r["label"], ref["label"])
            np.testing.assert_array_equal(r["affine"], ref["affine"])

    ds = read_volumes(str(tmp_path), "train")
    assert ds.context.use_datasource_v2 is False  # rayssl's settings (rayssl.data.context)
    assert sorted(r["case_id"] for r in ds.select_columns(["case_id"]).iter_rows()) == sorted(
        r["case_id"] for r in data["train"])


def test_rewrite_replaces_split(ray_session, tmp_path):
    ds = ray_session.data.from_items(_rows(6), override_num_blocks=2)
    write_volumes(ds, str(tmp_path), "val", rows_per_file=2)
    write_volumes(ds, str(tmp_path), "val", rows_per_file=2)  # a re-run must not append
    _finish(tmp_path, {"val": {"cases": 6}})
    assert read_volumes(str(tmp_path), "val").count() == 6
    assert len(os.listdir(tmp_path / "val")) >= 3  # rows_per_file=2 bounds each file


def test_manifest_errors(tmp_path):
    with pytest.raises(ValueError, match="not a volume cache: manifest.json not found"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_manifest(str(tmp_path))
    write_json(str(tmp_path), "manifest.json", {"splits": {"train": {"cases": 3}, "val": {"cases": 0}}})
    assert read_manifest(str(tmp_path / "manifest.json"))["splits"]["train"]["cases"] == 3
    with pytest.raises(ValueError, match="no split 'test'; available: train, val"):
        read_volumes(str(tmp_path), "test")
    with pytest.raises(ValueError, match="split 'val' has no cases"):
        read_volumes(str(tmp_path), "val")
    assert json.loads((tmp_path / "manifest.json").read_text())["splits"]["val"] == {"cases": 0}


def test_write_volumes_rejects_bad_rows_per_file(tmp_path):
    with pytest.raises(ValueError, match="rows_per_file must be >= 1"):
        write_volumes(None, str(tmp_path), "train", rows_per_file=0)
