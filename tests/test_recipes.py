import gzip

import numpy as np
import pytest
from PIL import Image

from rayssl.data.io import BadInput
from rayssl.data.preprocess import load_case, preprocess
from rayssl.config.recipes import RECIPES
from rayssl.data.sources import Case

from conftest import write_nifti


def _affine(spacing=(1.0, 1.0, 1.0), flip_xy=False):
    a = np.diag([*spacing, 1.0])
    if flip_xy:
        a[0, 0], a[1, 1] = -spacing[0], -spacing[1]
    return a


def _save(path, data, affine=None):
    return str(write_nifti(path, data, _affine() if affine is None else affine))


def test_config_accepts_exactly_the_recipes():
    from rayssl.config import ConfigError, DataConfig, build_config

    assert all(build_config(DataConfig, {"recipe": name}).recipe == name for name in RECIPES)
    with pytest.raises(ConfigError, match="recipe"):
        build_config(DataConfig, {"recipe": "ct_other"})
    assert RECIPES["ct_btcv"].spacing == (1.5, 1.5, 2.0) and RECIPES["mri_brats"].spacing == (1.0, 1.0, 1.0)
    assert RECIPES["ct_genesis"].spacing is None and RECIPES["cxr"].spatial_dims == 2


def test_ct_btcv_window():
    # slabs along x at the recipe's own spacing (no resampling); the -1000 / -175 slabs lie between
    # foreground slabs so the foreground crop keeps them
    hu = np.array([37.5, -1000.0, -175.0, 250.0, 1000.0], np.float32)
    image = np.broadcast_to(hu[:, None, None], (5, 4, 3))[None].copy()
    out, _, spacing, affine = preprocess("ct_btcv", image, None, _affine((1.5, 1.5, 2.0)))
    assert out.shape == (1, 5, 4, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0, 0], [0.5, 0.0, 0.0, 1.0, 1.0], atol=1e-6)
    assert spacing == pytest.approx((1.5, 1.5, 2.0))


def test_ct_btcv_crops_the_air():
    image = np.full((1, 12, 10, 8), -1000.0, np.float32)
    image[0, 3:9, 2:7, 1:6] = 40.0  # body
    label = np.zeros((12, 10, 8), np.uint8)
    label[4:6, 3:5, 2:4] = 1
    out, lab, _, affine = preprocess("ct_btcv", image, label, _affine((1.5, 1.5, 2.0)))
    assert out.shape == (1, 6, 5, 5) and lab.shape == (6, 5, 5) and lab.dtype == np.uint8
    assert lab.sum() == 8 and out.min() > 0
    # the crop moves the origin to the first body voxel
    np.testing.assert_allclose(affine[:3, 3], [3 * 1.5, 2 * 1.5, 1 * 2.0])


def test_ct_genesis_window_and_native_spacing():
    image = np.array([-2000, -1000, 0, 500, 1000, 3000], np.float32).reshape(1, 6, 1, 1) * np.ones((1, 6, 2, 2))
    out, _, spacing, _ = preprocess("ct_genesis", image.astype(np.float32), None, _affine((0.7, 0.7, 5.0)))
    assert out.shape == (1, 6, 2, 2)
    np.testing.assert_allclose(out[0, :, 0, 0], [0.0, 0.0, 0.5, 0.75, 1.0, 1.0], atol=1e-6)
    assert spacing == pytest.approx((0.7, 0.7, 5.0))


def test_resampling_shape_and_nearest_labels():
    # 31 x 31 x 21 voxels at 1 mm span 30 x 30 x 20 mm -> 20 intervals of 1.5 mm, 10 of 2 mm
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 31, 31, 21)).astype(np.float32)
    label = rng.integers(0, 3, size=(31, 31, 21)).astype(np.uint8)
    out, lab, spacing, affine = preprocess("ct_genesis", image, label, _affine(), spacing=(1.5, 1.5, 2.0))
    assert out.shape == (1, 21, 21, 11) and lab.shape == (21, 21, 11)
    assert spacing == pytest.approx((1.5, 1.5, 2.0))
    np.testing.assert_allclose(np.diag(affine)[:3], (1.5, 1.5, 2.0))
    assert set(np.unique(lab)) <= {0, 1, 2}  # nearest neighbour, no blended label values
    # corners coincide, so the resampled corner voxels are the original ones
    assert lab[0, 0, 0] == label[0, 0, 0] and lab[-1, -1, -1] == label[-1, -1, -1]


def test_ras_reorientation_of_lps_affine():
    image = np.zeros((1, 5, 4, 3), np.float32)
    image[0, 0, 0, 0] = 1000.0  # marker at index (0, 0, 0)
    label = (image[0] > 0).astype(np.uint8)
    lps = _affine((1.0, 1.0, 1.0), flip_xy=True)
    lps[:3, 3] = (10.0, 20.0, 30.0)
    out, lab, _, affine = preprocess("ct_genesis", image, label, lps)
    # x and y are flipped, z kept: the marker moves to (4, 3, 0)
    assert np.argwhere(out[0] == out.max()).tolist() == [[4, 3, 0]]
    assert np.argwhere(lab).tolist() == [[4, 3, 0]]
    np.testing.assert_allclose(np.diag(affine)[:3], (1.0, 1.0, 1.0))
    # ...and the marker keeps its world position
    np.testing.assert_allclose(affine @ [4, 3, 0, 1], lps @ [0, 0, 0, 1])


def test_mri_brats_zscore_over_nonzero():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 8, 8, 8), np.float32)
    image[0, 2:6, 2:6, 2:6] = rng.uniform(100, 500, size=(4, 4, 4))
    image[1, 2:6, 2:6, 2:6] = rng.uniform(1000, 1200, size=(4, 4, 4))
    out, _, spacing, _ = preprocess("mri_brats", image, None, _affine())
    assert out.shape == (2, 8, 8, 8) and spacing == pytest.approx((1.0, 1.0, 1.0))
    inside = image[0] != 0
    for c in range(2):
        v = out[c][inside]
        assert abs(v.mean()) < 1e-5 and abs(v.std() - 1.0) < 1e-4
        assert (out[c][~inside] == 0).all()
        ref = (image[c][inside] - image[c][inside].mean()) / image[c][inside].std()
        np.testing.assert_allclose(v, ref, atol=1e-4)


def test_mri_genesis_percentile_rescale_hand_computed():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 8, 8, 8), np.float32)
    image[0, 2:6, 2:6, 2:6] = rng.uniform(100, 500, size=(4, 4, 4))
    image[1, 2:6, 2:6, 2:6] = rng.uniform(-50, 1200, size=(4, 4, 4))
    out, _, spacing, _ = preprocess("mri_genesis", image, None, _affine())
    assert out.shape == (2, 8, 8, 8) and out.dtype == np.float32 and spacing == pytest.approx((1.0, 1.0, 1.0))
    inside = image[0] != 0
    for c in range(2):
        lo, hi = np.percentile(image[c][inside], [0.5, 99.5])  # of the non-zero voxels only
        np.testing.assert_allclose(out[c][inside], np.clip((image[c][inside] - lo) / (hi - lo), 0, 1), atol=1e-6)
        assert (out[c][~inside] == 0).all()  # background stays 0, even below lo


def test_unit_range_and_genesis_forms():
    from rayssl.config.recipes import check_genesis_recipe, genesis_recipe, hu_to_intensity, in_unit_range

    assert [n for n in RECIPES if in_unit_range(n)] == ["ct_btcv", "ct_genesis", "mri_genesis", "cxr"]
    assert genesis_recipe("ct_btcv") == "ct_btcv" and genesis_recipe("ct_genesis") == "ct_genesis"
    assert genesis_recipe("mri_brats") == "mri_genesis" and genesis_recipe("mri_genesis") == "mri_genesis"
    with pytest.raises(ValueError, match="'none'"):
        genesis_recipe("none")
    check_genesis_recipe("mri_genesis")
    with pytest.raises(ValueError, match=r"data\.recipe='mri_brats'.*mri_genesis"):
        check_genesis_recipe("mri_brats")
    with pytest.raises(ValueError, match=r"data\.recipe='none'"):
        check_genesis_recipe("none")
    assert hu_to_intensity("ct_genesis", -150.0) == pytest.approx(0.425)
    assert hu_to_intensity("ct_btcv", -1000.0) == 0.0
    with pytest.raises(ValueError, match="no HU window"):
        hu_to_intensity("mri_genesis", -150.0)


def test_cxr_histogram_equalisation():
    i, j = np.mgrid[0:300, 0:200]
    image = ((((i / 299 + j / 199) / 2) ** 3) * 255)[None].astype(np.float32)  # smooth, mostly dark
    out, lab, spacing, _ = preprocess("cxr", image, None, np.eye(4))
    assert out.shape == (1, 224, 224) and lab is None and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and out.max() > 0.95
    assert spacing == pytest.approx((300 / 224, 200 / 224))

    def flatness(x):  # std of the 16-bin histogram over [0, 1]; 0 for a perfectly flat one
        counts, _ = np.histogram(x, bins=16, range=(0, 1))
        return (counts / counts.sum()).std()

    assert flatness(out) < 0.25 * flatness(image / 255)
    assert preprocess("cxr", image, None, np.eye(4), size_2d=64)[0].shape == (1, 64, 64)


def test_none_only_casts():
    image = np.arange(24, dtype=np.int16).reshape(1, 2, 3, 4)
    out, lab, spacing, _ = preprocess("none", image, None, _affine((2.0, 2.0, 2.0), flip_xy=True))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image)
    assert spacing == pytest.approx((2.0, 2.0, 2.0))


def test_unknown_recipe():
    with pytest.raises(ValueError, match="unknown recipe 'ct'"):
        preprocess("ct", np.ones((1, 2, 2, 2), np.float32), None, np.eye(4))


# --------------------------------------------------------------------------- load_case


def _ct(tmp_path, shape=(8, 8, 8), label_shape=None, label_affine=None, name="img.nii.gz"):
    rng = np.random.default_rng(0)
    hu = rng.integers(-200, 300, size=shape).astype(np.int16)
    img = _save(tmp_path / name, hu, _affine((1.5, 1.5, 2.0)))
    lab = np.zeros(label_shape or shape, np.uint8)
    lab[2:4, 2:4, 2:4] = 1
    lbl = _save(tmp_path / f"lab_{name}", lab, _affine((1.5, 1.5, 2.0)) if label_affine is None else label_affine)
    return Case("c1", [img], lbl, split="val")


def test_load_case_ct(tmp_path):
    out = load_case(_ct(tmp_path), "ct_genesis")
    assert out["case_id"] == "c1" and out["split"] == "val" and out["target"] is None
    assert out["image"].shape == (1, 8, 8, 8) and out["label"].shape == (8, 8, 8)
    assert out["label"].dtype == np.uint8 and out["label"].sum() == 8
    assert 0 <= out["image"].min() and out["image"].max() <= 1
    assert out["spacing"] == pytest.approx((1.5, 1.5, 2.0)) and out["affine"].shape == (4, 4)


def test_load_case_cxr_target(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30), dtype=np.uint8)).save(tmp_path / "x.png")
    case = Case("x", [str(tmp_path / "x.png")], target=[0.0] * 13 + [1.0])
    out = load_case(case, "cxr", size_2d=32)
    assert out["image"].shape == (1, 32, 32) and out["label"] is None
    assert out["target"].dtype == np.float32 and out["target"].tolist() == [0.0] * 13 + [1.0]


def _reason(case, recipe="ct_btcv"):
    with pytest.raises(BadInput) as e:
        load_case(case, recipe)
    assert e.value.path  # the failing input is named
    return str(e.value)


def test_bad_nan_inf(tmp_path):
    data = np.ones((8, 8, 8), np.float32)
    data[0, 0, :2] = np.nan
    data[1, 1, 1] = np.inf
    case = Case("n", [_save(tmp_path / "nan.nii.gz", data)])
    assert _reason(case) == "image has 3 NaN/Inf voxels"


def test_bad_constant(tmp_path):
    case = Case("k", [_save(tmp_path / "k.nii.gz", np.full((8, 8, 8), -1000, np.int16))])
    assert _reason(case) == "image is constant (all voxels -1000)"


def test_bad_empty(tmp_path):
    case = Case("e", [_save(tmp_path / "e.nii", np.zeros((0, 8, 8), np.float32))])
    assert _reason(case) == "empty image, shape (0, 8, 8)"


def test_bad_shape_mismatch(tmp_path):
    case = _ct(tmp_path, shape=(8, 8, 8), label_shape=(4, 4, 4))
    assert _reason(case) == "label shape (4, 4, 4) != image shape (8, 8, 8)"


def test_bad_affine_mismatch(tmp_path):
    shifted = _affine((1.5, 1.5, 2.0))
    shifted[0, 3] = 3.0
    assert _reason(_ct(tmp_path, label_affine=shifted)).startswith("label affine differs from image affine")
    # a difference far below the tolerance is accepted (float rounding in real datasets)
    close = _affine((1.5, 1.5, 2.0))
    close[0, 3] = 1e-5
    assert load_case(_ct(tmp_path, label_affine=close, name="ok.nii.gz"), "ct_genesis")["label"].sum() == 8


def test_bad_2d_nifti(tmp_path):
    case = Case("f", [_save(tmp_path / "flat.nii.gz", np.ones((8, 8), np.float32))])
    assert _reason(case) == "expected a 3D or 4D volume, got shape (8, 8)"


def test_bad_files(tmp_path):
    good = _save(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    raw = open(good, "rb").read()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    assert _reason(Case("t", [str(tmp_path / "cut.nii.gz")])).startswith("truncated: header claims 16 x 16 x 16 voxels")
    (tmp_path / "junk.nii.gz").write_bytes(b"\x00garbage" * 100)
    assert _reason(Case("g", [str(tmp_path / "junk.nii.gz")])) == "not a NIfTI file"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "x.nii").write_bytes((tmp_path / "x.png").read_bytes())
    assert _reason(Case("p", [str(tmp_path / "x.nii")])) == "not a NIfTI file"
    assert _reason(Case("m", [str(tmp_path / "missing.nii.gz")])) == "file not found"
    (tmp_path / "z.nii.gz").write_bytes(gzip.compress(b"x" * 400))
    assert _reason(Case("z", [str(tmp_path / "z.nii.gz")])) == "not a NIfTI file"
    # a missing label names the label file
    with pytest.raises(BadInput, match="file not found") as e:
        load_case(Case("l", [good], str(tmp_path / "nolabel.nii.gz")), "ct_btcv")
    assert e.value.path == str(tmp_path / "nolabel.nii.gz")


def test_synthetic_ct_and_mri_end_to_end(tmp_path):
    from rayssl.config import DataConfig
    from rayssl.data.sources import resolve_source
    from rayssl.data.synthetic import make_ct_phantoms, make_mri_phantoms

    ct = resolve_source(DataConfig(source=f"msd:{make_ct_phantoms(tmp_path / 'ct', n=2, shape=(40, 40, 20))}"))
    out = load_case(ct.cases[0], ct.recipe)
    img, lab, aff = out["image"], out["label"], out["affine"]
    assert img.shape[1:] == lab.shape and out["spacing"] == pytest.approx((1.5, 1.5, 2.0))
    assert (np.diag(aff)[:3] > 0).all()  # RAS after reorienting the LPS-like file
    # in RAS index order the liver (1) lies at larger x than the spleen (2), i.e. on the patient's right
    assert np.argwhere(lab == 1)[:, 0].mean() > np.argwhere(lab == 2)[:, 0].mean()
    assert 0.5 < img[0][lab == 1].mean() < 0.6  # liver ~60 HU -> (60 + 175) / 425 = 0.553
    mri = resolve_source(DataConfig(source=f"msd:{make_mri_phantoms(tmp_path / 'mri', n=2, shape=(32, 32, 32))}"))
    out = load_case(mri.cases[0], mri.recipe)
    assert out["image"].shape == (4, 32, 32, 32) and set(np.unique(out["label"])) <= {0, 1, 2, 3}
    brain = out["image"][0] != 0
    assert abs(out["image"][2][brain].mean()) < 1e-4
    # the Models Genesis form: every channel in [0, 1], spanning it, background 0
    img = load_case(mri.cases[0], "mri_genesis")["image"]
    assert img.shape == (4, 32, 32, 32)
    for ch in img:
        assert ch.min() >= 0.0 and ch.max() <= 1.0 and ch.max() == pytest.approx(1.0)
        assert (ch[~brain] == 0).mean() > 0.99
