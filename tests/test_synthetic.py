import csv
import json

import numpy as np
import pytest
from PIL import Image

from rayssl.config import DataConfig
from rayssl.data.io import read_image_2d, read_label, read_volume
from rayssl.data.sources import resolve_source
from rayssl.data.synthetic import (
    CT_LABELS,
    CXR_COLUMNS,
    CXR_FINDINGS,
    MRI_LABELS,
    ct_phantom,
    cxr_phantom,
    ensure_synthetic,
    make_ct_phantoms,
    make_cxr_phantoms,
    make_mri_phantoms,
    mri_phantom,
)

SMALL_CT = (40, 40, 20)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ct_phantom_hu_per_organ():
    hu, label = ct_phantom(np.random.default_rng(3))
    assert hu.dtype == np.int16 and label.dtype == np.uint8 and hu.shape == label.shape == (96, 96, 48)
    assert set(np.unique(label)) == set(CT_LABELS)
    mean = {k: float(hu[label == k].mean()) for k in CT_LABELS if k}
    assert 45 < mean[1] < 75  # liver ~60
    assert 35 < mean[2] < 65  # spleen ~50
    assert 110 < mean[3] < 175 and 110 < mean[4] < 175  # contrast-enhanced kidneys ~150
    assert 180 < mean[5] < 230  # aorta ~200
    assert 600 < mean[6] < 800  # vertebral bone ~700
    assert mean[6] > mean[5] > mean[3] > mean[1]
    # air outside the body, a fat rim, noise of about 15 HU
    assert np.median(hu[:3, :3, :]) < -950
    assert ((hu > -150) & (hu < -50) & (label == 0)).sum() > 1000
    assert 8 < hu[:4, :4, :].std() < 25


def test_ct_phantom_random_but_seeded():
    a = ct_phantom(np.random.default_rng(1), SMALL_CT)
    b = ct_phantom(np.random.default_rng(1), SMALL_CT)
    c = ct_phantom(np.random.default_rng(2), SMALL_CT)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert (a[1] != c[1]).sum() > 100  # organ shapes/positions change with the seed


def test_make_ct_files_deterministic_and_valid(tmp_path):
    a = make_ct_phantoms(tmp_path / "a", n=2, seed=7, shape=SMALL_CT)
    b = make_ct_phantoms(tmp_path / "b", n=2, seed=7, shape=SMALL_CT)
    c = make_ct_phantoms(tmp_path / "c", n=2, seed=8, shape=SMALL_CT)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb  # byte-identical, gzip included
    assert fa.keys() == fc.keys() and fa["imagesTr/ct_000.nii.gz"] != fc["imagesTr/ct_000.nii.gz"]
    meta = json.loads((a / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"]["1"] == "liver" and meta["labels"]["0"] == "background"
    assert meta["numTraining"] == len(meta["training"]) == 2 and meta["test"] == []
    for item in meta["training"]:
        assert (a / item["image"]).is_file() and (a / item["label"]).is_file()


def test_ct_round_trip_through_source(tmp_path):
    spacing = (1.6, 1.6, 3.0)
    root = make_ct_phantoms(tmp_path / "ct", n=3, seed=0, shape=SMALL_CT, spacing=spacing)
    src = resolve_source(DataConfig(source=f"msd:{root}", folds=3))
    assert src.kind == "msd" and src.recipe == "ct_btcv" and src.channels == 1 and src.spatial_dims == 3
    assert src.labels == CT_LABELS and src.modality == {0: "CT"} and not src.missing
    assert [c.case_id for c in src.cases] == ["ct_000", "ct_001", "ct_002"]
    img, aff = read_volume(src.cases[0].image)
    lab, laff = read_label(src.cases[0].label)
    assert img.shape == (1, *SMALL_CT) and lab.shape == SMALL_CT
    # LPS-like affine as written: diag(-sx, -sy, sz), identical for image and label
    np.testing.assert_allclose(np.diag(aff)[:3], (-1.6, -1.6, 3.0), rtol=1e-6)
    np.testing.assert_allclose(aff, laff)
    # anatomy sits on the right side in world (RAS) coordinates: liver right (+x), spleen left,
    # aorta anterior (+y) of the vertebra
    def world_centroid(k):
        ijk = np.argwhere(lab == k).mean(0)
        return aff[:3, :3] @ ijk + aff[:3, 3]

    assert world_centroid(1)[0] > world_centroid(2)[0]
    assert world_centroid(4)[0] > world_centroid(3)[0]  # right kidney right of the left one
    assert world_centroid(5)[1] > world_centroid(6)[1]


def test_mri_phantom_channels_and_nested_labels():
    image, label = mri_phantom(np.random.default_rng(0), (48, 48, 48))
    assert image.shape == (48, 48, 48, 4) and image.dtype == np.float32
    assert set(np.unique(label)) == {0, 1, 2, 3}
    brain = image[..., 0] > 0
    assert (image[~brain] == 0).all() and brain.mean() > 0.2  # zero background
    assert (label[~brain] == 0).all()  # the tumour is inside the brain
    flair, t1, t1gd, t2 = (image[..., c] for c in range(4))
    m = {k: label == k for k in range(4)}
    # per-channel contrasts: edema bright on FLAIR, enhancing rim bright on T1gd, necrosis bright on T2
    assert flair[m[1]].mean() > 1.5 * flair[m[0] & brain].mean()
    assert t1gd[m[3]].mean() > 1.5 * t1gd[m[1]].mean()
    assert t2[m[2]].mean() > t2[m[3]].mean()
    assert t1gd[m[3]].mean() > t1[m[3]].mean() * 2
    # nesting: non-enhancing core inside the enhancing rim inside the edema (mean distance to the centre)
    centre = tuple(int(round(x)) for x in np.argwhere(label > 0).mean(0))
    assert label[centre] in (2, 3)
    radius = {k: np.sqrt(((np.argwhere(label == k) - centre) ** 2).sum(1)).mean() for k in (1, 2, 3)}
    assert radius[2] < radius[3] < radius[1]


def test_mri_files_msd_task01_layout(tmp_path):
    root = make_mri_phantoms(tmp_path / "mri", n=2, seed=0, shape=(32, 32, 32))
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"}
    assert meta["labels"] == {str(k): v for k, v in MRI_LABELS.items()}
    src = resolve_source(DataConfig(source=str(root), folds=2))  # bare path: auto-detected as MSD
    assert src.kind == "msd" and src.channels == 4 and src.recipe == "mri_brats"
    img, aff = read_volume(src.cases[0].image)
    assert img.shape == (4, 32, 32, 32)
    np.testing.assert_allclose(np.abs(np.diag(aff)[:3]), (1.0, 1.0, 1.0))
    again = make_mri_phantoms(tmp_path / "again", n=2, seed=0, shape=(32, 32, 32))
    assert _files(root) == _files(again)


def test_cxr_findings_are_rendered():
    base = cxr_phantom(np.random.default_rng(5), set()).astype(np.float32)
    assert base.shape == (256, 256)
    brighter = ("Cardiomegaly", "Effusion", "Mass", "Nodule", "Consolidation", "Edema", "Pneumonia")
    for finding in CXR_FINDINGS:
        img = cxr_phantom(np.random.default_rng(5), {finding}).astype(np.float32)
        diff = img - base
        assert (np.abs(diff) > 3).sum() > 50, finding  # visibly different pixels
        if finding in brighter:
            assert diff.sum() > 0, finding
        if finding in ("Pneumothorax", "Emphysema"):
            assert diff.sum() < 0, finding
    with pytest.raises(ValueError, match="unknown findings"):
        cxr_phantom(np.random.default_rng(0), {"Broken Leg"})


def test_make_cxr_layout(tmp_path):
    root = make_cxr_phantoms(tmp_path / "cxr", n=20, seed=1, size=64)
    with open(root / "Data_Entry_2017.csv") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CXR_COLUMNS and len(rows) == 21
    header = rows[0]
    records = [dict(zip(header, r)) for r in rows[1:]]
    for r in records:
        pid, fu = int(r["Patient ID"]), int(r["Follow-up #"])
        assert r["Image Index"] == f"{pid:08d}_{fu:03d}.png"
        found = r["Finding Labels"].split("|")
        assert found == ["No Finding"] or set(found) <= set(CXR_FINDINGS)
        im = Image.open(root / "images" / r["Image Index"])
        assert im.mode == "L" and im.size == (64, 64)
    train = (root / "train_val_list.txt").read_text().split()
    test = (root / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(r["Image Index"] for r in records) and test
    pid = {r["Image Index"]: r["Patient ID"] for r in records}
    assert not {pid[n] for n in train} & {pid[n] for n in test}  # split by patient
    again = make_cxr_phantoms(tmp_path / "again", n=20, seed=1, size=64)
    other = make_cxr_phantoms(tmp_path / "other", n=20, seed=2, size=64)
    assert _files(root) == _files(again) and _files(root) != _files(other)


def test_cxr_round_trip_through_source(tmp_path):
    root = make_cxr_phantoms(tmp_path / "cxr", n=12, seed=0, size=64)
    src = resolve_source(DataConfig(source=f"cxr14:{root}", folds=2))
    assert src.kind == "cxr14" and src.spatial_dims == 2 and src.class_names == list(CXR_FINDINGS)
    assert len(src.cases) == 12 and not src.missing
    test = set((root / "test_list.txt").read_text().split())
    assert {c.case_id + ".png" for c in src.cases if c.split == "test"} == test
    img = read_image_2d(src.cases[0].image[0])
    assert img.shape == (1, 64, 64) and 0 <= img.min() < img.max() <= 255


def test_ensure_synthetic_reuses_and_regenerates(tmp_path):
    root = ensure_synthetic("cxr", 4, 0, str(tmp_path))
    assert root == tmp_path / "cxr-n4-s0" and (root / ".complete").is_file()
    stamp = (root / "Data_Entry_2017.csv").stat().st_mtime_ns
    assert ensure_synthetic("cxr", 4, 0, str(tmp_path)) == root
    assert (root / "Data_Entry_2017.csv").stat().st_mtime_ns == stamp  # reused, not rewritten
    (root / ".complete").unlink()  # an interrupted earlier run
    (root / "images" / "00000001_000.png").unlink()
    ensure_synthetic("cxr", 4, 0, str(tmp_path))
    assert (root / "images" / "00000001_000.png").is_file() and (root / ".complete").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    with pytest.raises(ValueError, match="unknown synthetic kind 'pet'"):
        ensure_synthetic("pet", 4, 0, str(tmp_path))
