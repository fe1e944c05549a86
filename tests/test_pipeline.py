import dataclasses
import gzip
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rayssl.config import DataConfig, PrepareConfig
from rayssl.data.cache import cached_files, read_manifest, read_volumes
from rayssl.data.pipeline import QuarantineError, case_dataset, prepare, resolve_recipe, train_volumes
from rayssl.data.preprocess import load_case
from rayssl.data.sources import resolve_source
from rayssl.data.synthetic import make_ct_phantoms, make_cxr_phantoms

ROI = (16, 16, 8)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return make_ct_phantoms(tmp_path_factory.mktemp("ct"), n=4, seed=0, shape=(48, 48, 24))


@pytest.fixture(scope="module")
def bad_dataset(phantoms, tmp_path_factory):
    """The 4 phantoms plus a truncated .nii.gz, a volume with NaNs and a listed but missing file."""
    root = tmp_path_factory.mktemp("bad") / "ds"
    shutil.copytree(phantoms, root)
    meta = json.loads((root / "dataset.json").read_text())
    first = meta["training"][0]
    good = (root / first["image"]).read_bytes()
    (root / "imagesTr/trunc.nii.gz").write_bytes(good[: len(good) // 2])
    img = nib.load(root / first["image"])
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[3:5, 3:5, 3:5] = np.nan
    nan = nib.Nifti1Image(data, img.affine)
    (root / "imagesTr/nan.nii.gz").write_bytes(gzip.compress(nan.to_bytes()))
    for name in ("trunc", "nan", "missing"):
        meta["training"].append({"image": f"./imagesTr/{name}.nii.gz", "label": first["label"]})
    meta["numTraining"] = len(meta["training"])
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _data(source, **kw):
    return DataConfig(source=f"msd:{source}", recipe="ct_btcv", roi=ROI, patches_per_volume=3,
                      splits=["train", "val"], folds=4, **kw)


def test_prepare_roundtrip(ray_session, phantoms, tmp_path):
    data = _data(phantoms)
    out = prepare(PrepareConfig(data=data, out=str(tmp_path / "cache")), resolve_source(data), "ct_btcv")
    manifest = read_manifest(out)
    source = resolve_source(data)
    assert manifest["format"] == "rayssl-volumes/2" and manifest["dtype"] == "float32"
    assert manifest["source_kind"] == "msd" and manifest["recipe"] == "ct_btcv"
    assert manifest["spacing"] == [1.5, 1.5, 2.0] and manifest["channels"] == 1 and manifest["spatial_dims"] == 3
    assert manifest["labels"]["1"] == source.labels[1] and manifest["quarantined"] == []
    assert json.loads((tmp_path / "cache" / "quarantine.json").read_text()) == []

    for split in ("train", "val"):
        cases = {c.case_id: c for c in source.cases if c.split == split}
        got = list(read_volumes(out, split).epoch_rows(0, 1)())
        # manifest counts match the rows read back, one file per case, in the listing's order
        assert manifest["splits"][split]["cases"] == len(got) == len(cases) == len(manifest["splits"][split]["files"])
        assert [r["case_id"] for r in got] == list(cases)
        for row in got:  # bit-identical to preprocessing the case in-process
            ref = load_case(cases[row["case_id"]], "ct_btcv")
            assert row["image"].dtype == np.float32 and row["image"].tobytes() == ref["image"].tobytes()
            np.testing.assert_array_equal(row["label"], ref["label"])

    # training reads the cache when cache_dir is set: the volumes with the columns asked for
    cached = data.model_copy(update={"cache_dir": out})
    volumes = train_volumes(cached, ["image", "label"], None, "ct_btcv", manifest)
    assert volumes.path == f"streamed from the cache {out}"
    rows = list(volumes.volumes.epoch_rows(0, 1)())
    assert {r["case_id"] for r in rows} == {c.case_id for c in source.split("train")}
    assert set(rows[0]) == {"case_id", "image", "label"}
    with pytest.raises(ValueError, match=r"preprocessed with spacing \[1.5, 1.5, 2.0\] \(config: \[1.0, 1.0, 1.0\]\)"):
        train_volumes(cached.model_copy(update={"spacing": (1.0, 1.0, 1.0)}), ["image"], None, "ct_btcv", manifest)
    with pytest.raises(ValueError, match="preprocessed with recipe 'ct_btcv' \\(config: 'ct_genesis'\\)"):
        train_volumes(cached.model_copy(update={"recipe": "ct_genesis"}), ["image"], None, "ct_genesis", manifest)


def test_prepare_resumes_recomputing_nothing_done(ray_session, phantoms, tmp_path, caplog):
    caplog.set_level("INFO", logger="rayssl")
    data = _data(phantoms)
    source, cache = resolve_source(data), tmp_path / "cache"
    cfg = PrepareConfig(data=data, out=str(cache))
    first = read_manifest(prepare(cfg, source, "ct_btcv"))
    written = {p: p.stat().st_mtime_ns for p in cache.glob("*/*.arrow")}
    assert len(written) == 4 and all(first["splits"][s]["skipped"] == 0 for s in ("train", "val"))

    again = read_manifest(prepare(cfg, source, "ct_btcv"))  # every case in the cache: 0 recomputed
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*/*.arrow")} == written
    for split in ("train", "val"):
        assert again["splits"][split]["skipped"] == again["splits"][split]["cases"] == first["splits"][split]["cases"]
        assert again["splits"][split]["files"] == first["splits"][split]["files"] and again["splits"][split]["bytes_written"] == 0

    # a prepare killed midway: one case never finished (its half-written temporary file is left behind)
    lost = cache / "train" / first["splits"]["train"]["files"][0]
    lost.unlink()
    (cache / "train" / f".{lost.name}.0123.tmp").write_bytes(b"half a case")
    caplog.clear()
    third = read_manifest(prepare(cfg, source, "ct_btcv"))
    train = third["splits"]["train"]
    assert train["files"] == first["splits"]["train"]["files"] and train["skipped"] == train["cases"] - 1
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*/*.arrow") if p != lost} == {
        p: t for p, t in written.items() if p != lost}
    progress = [m for m in caplog.messages if m.startswith("prepare train:")]
    assert re.fullmatch(rf"prepare train: {train['cases']}/{train['cases']} cases \({train['cases'] - 1} already in the "
                        r"cache\), 0 quarantined, [0-9.]+ cases/s, ETA 0m00s", progress[-1]), progress

    # other preprocessing into the same folder would mix two kinds of volumes: refused
    with pytest.raises(ValueError, match=r"holds volumes prepared with spacing \[1.5, 1.5, 2.0\] \(now \[3.0, 3.0, 3.0\]\); "
                                         "choose another out"):
        prepare(PrepareConfig(data=data.model_copy(update={"spacing": (3.0, 3.0, 3.0)}), out=str(cache)), source, "ct_btcv")


def test_prepare_writes_to_a_filesystem_uri(ray_session, phantoms, tmp_path):
    data = _data(phantoms)
    uri = f"file://{tmp_path / 'bucket'}"
    out = prepare(PrepareConfig(data=data, out=uri), resolve_source(data), "ct_btcv")
    assert out == uri
    rows = list(read_volumes(uri, "train").epoch_rows(0, 1)())
    assert sorted(r["case_id"] for r in rows) == sorted(c.case_id for c in resolve_source(data).split("train"))
    assert read_manifest(f"{uri}/manifest.json")["splits"]["train"]["cases"] == len(rows)


def test_train_volumes_kept_in_object_store_or_streamed(ray_session, phantoms, tmp_path):
    from rayssl.train.worker import volume_stream

    root = tmp_path / "phantoms"
    shutil.copytree(phantoms, root)
    data = _data(root)
    train = resolve_source(data).split("train")
    kept = train_volumes(data, ["image"], resolve_source(data), "ct_btcv", at_once=1).volumes  # one case at a time; returns before they are done
    streamed = train_volumes(data.model_copy(update={"keep_volumes": False}), ["image"], resolve_source(data), "ct_btcv").dataset
    assert kept.counts() == [1] * len(train)
    rows = volume_stream(kept, 0, 1)  # what a training worker reads every epoch
    a = {r["case_id"]: r["image"] for r in rows()}
    b = {r["case_id"]: r["image"] for r in streamed.take_all()}
    assert list(a) == [c.case_id for c in train] and a.keys() == b.keys()  # the listing's order
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert all(set(r) == {"case_id", "image"} for r in rows())  # only the columns asked for are kept
    # kept volumes were preprocessed once: every later epoch reads them from the object store, not the files
    shutil.rmtree(root / "imagesTr")
    again = {r["case_id"]: r["image"] for r in rows()}
    assert again.keys() == a.keys() and all(again[k].tobytes() == a[k].tobytes() for k in a)
    assert streamed.take_all() == []  # streamed: read again, and every file is gone (quarantined)


def test_kept_volumes_count_and_share_the_usable_cases(ray_session, tmp_path):
    from rayssl.train.launch import RunDir, RunPlan

    root = make_ct_phantoms(tmp_path / "ct", n=5, seed=0, shape=(24, 24, 12))
    data = DataConfig(source=f"msd:{root}", recipe="ct_btcv", roi=(16, 16, 8), folds=5, val_fold=0)
    train = resolve_source(data).split("train")
    Path(train[1].image[0]).write_bytes(b"not a NIfTI file")
    kept = train_volumes(data, ["image", "label"], resolve_source(data), "ct_btcv", at_once=1).volumes
    plan = RunPlan(RunDir("r", str(tmp_path), str(tmp_path / "r")), len(train), 1, 1e-3, "ct_btcv", volumes=kept)
    assert plan.training_cases() == len(train) - 1 == 3
    # 2 workers share the 3 usable cases equally, in the listing's order, and leave the third out
    shares = [[r["case_id"] for r in kept.epoch_rows(rank, 2)()] for rank in (0, 1)]
    assert shares == [[train[0].case_id], [train[2].case_id]]
    assert {"label", "image"} <= set(next(kept.epoch_rows(0, 1)()))
    for case in train:  # each of its own content: copies would share a subject, and a split
        Path(case.image[0]).write_bytes(b"not a NIfTI file: " + case.case_id.encode())
    nothing = train_volumes(data, ["image"], resolve_source(data), "ct_btcv").volumes  # at_once=0: waits for every case
    with pytest.raises(ValueError, match=f"all {len(train)} training cases were unusable"):
        dataclasses.replace(plan, volumes=nothing).training_cases()


def test_case_dataset_whole_volumes(ray_session, phantoms):
    data = _data(phantoms)
    case = next(c for c in resolve_source(data).cases if c.split == "val")
    rows = {r["case_id"]: r for r in case_dataset(data, resolve_source(data), "ct_btcv", "val").take_all()}
    ref = load_case(case, "ct_btcv")
    got = rows[case.case_id]
    assert got["image"].tobytes() == ref["image"].tobytes() and got["image"].shape == ref["image"].shape
    np.testing.assert_array_equal(got["label"], ref["label"])
    np.testing.assert_allclose(got["spacing"], ref["spacing"])
    assert got["affine"].shape == (4, 4)


def test_quarantine_skips_bad_inputs(ray_session, bad_dataset, tmp_path, caplog):
    caplog.set_level("INFO", logger="rayssl")
    data = _data(bad_dataset)
    out = prepare(PrepareConfig(data=data, out=str(tmp_path / "cache")), resolve_source(data), "ct_btcv")
    manifest = read_manifest(out)
    listed = json.loads((tmp_path / "cache" / "quarantine.json").read_text())
    assert listed == manifest["quarantined"]
    reasons = {e["path"].rsplit("/", 1)[-1]: e["reason"] for e in listed}
    assert set(reasons) == {"trunc.nii.gz", "nan.nii.gz", "missing.nii.gz"}
    assert "file not found" in reasons["missing.nii.gz"]
    assert "NaN" in reasons["nan.nii.gz"]
    assert "truncated" in reasons["trunc.nii.gz"].lower()
    # the 4 good cases all made it
    good = sum(manifest["splits"][s]["cases"] for s in ("train", "val"))
    assert good == 4
    assert sum(read_volumes(out, s).cases() for s in ("train", "val")) == 4
    assert f"quarantined 3 of 7 inputs, 3 from msd:{bad_dataset} (see quarantine.json)" in caplog.messages
    assert manifest["quarantined_by_source"] == {f"msd:{bad_dataset}": 3}


def test_2d_images_carry_targets(ray_session, tmp_path):
    root = make_cxr_phantoms(tmp_path / "cxr", n=6, seed=0, size=64)
    data = DataConfig(source=f"cxr14:{root}", roi=(224, 224), splits=["train"])
    source = resolve_source(data)
    rows = case_dataset(data, source, resolve_recipe(data, source), ["train", "val", "test"]).take_all()
    assert len(rows) == len(source.cases)  # one row per image, resized to 224
    targets = {c.case_id: c.target for c in source.cases}
    for r in rows:
        assert r["image"].shape == (1, 224, 224) and 0.0 <= r["image"].min() and r["image"].max() <= 1.0
        assert r["target"].dtype == np.float32 and r["target"].tolist() == targets[r["case_id"]]
        assert "label" not in r


def test_strict_mode_fails_at_listing_then_names_every_bad_input(ray_session, bad_dataset, tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(QuarantineError) as err:  # a listed file is missing: known before anything is read
        prepare(PrepareConfig(data=(d := _data(bad_dataset, strict=True)), out=str(out)), resolve_source(d), "ct_btcv")
    assert "1 unusable input(s)" in str(err.value) and "missing.nii.gz: file not found" in str(err.value)
    assert not out.exists()
    listed = tmp_path / "listed"
    shutil.copytree(bad_dataset, listed)
    meta = json.loads((listed / "dataset.json").read_text())
    meta["training"] = [t for t in meta["training"] if "missing" not in t["image"]]
    (listed / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(QuarantineError) as err:  # the others show only when decoded: all named at the end
        prepare(PrepareConfig(data=(d := _data(listed, strict=True)), out=str(out)), resolve_source(d), "ct_btcv")
    msg = str(err.value)
    assert "2 unusable input(s)" in msg and "trunc.nii.gz" in msg and "nan.nii.gz" in msg and "NaN" in msg
    # no manifest, but nothing done is lost: the 4 good cases are in the folder for a re-run
    assert not (out / "manifest.json").exists()
    assert len(cached_files(str(out), "train") | cached_files(str(out), "val")) == 4


def test_eager_argument_errors(bad_dataset):
    # no Ray work: these fail while building the dataset
    with pytest.raises(QuarantineError, match="missing.nii.gz: file not found"):
        case_dataset(d := _data(bad_dataset, strict=True), resolve_source(d), "ct_btcv")
    with pytest.raises(ValueError, match=r"roi \(16, 16\) has 2 axes but source .* holds 3D images"):
        case_dataset(d := _data(bad_dataset).model_copy(update={"roi": (16, 16)}), s := resolve_source(d), resolve_recipe(d, s))
    with pytest.raises(ValueError, match="split must be one or more of"):
        case_dataset(d := _data(bad_dataset), resolve_source(d), "ct_btcv", split="training")
