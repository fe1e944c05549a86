import os
import subprocess
import sys

import numpy as np
import pytest

from rayssl.config import DataConfig
from rayssl.data.patches import case_rng, grid_origins, pad_to_roi, sample_patches


def _volume(shape=(20, 18, 12), channels=1, label=True, seed=0, case_id="case_0", target=None):
    rng = np.random.default_rng(seed)
    image = rng.random((channels, *shape), dtype=np.float32)
    lab = np.zeros(shape, np.uint8) if label else None
    return {"case_id": case_id, "split": "train", "image": image, "label": lab, "target": target}


def _data(**kw):
    kw.setdefault("roi", (8, 8, 4))
    return DataConfig(**kw)


def _crop(array, origin, roi):
    return array[(..., *(slice(o, o + r) for o, r in zip(origin, roi)))]


def test_random_shapes_dtypes_and_content():
    vol = _volume(channels=2)
    vol["label"][:] = np.arange(vol["label"].size).reshape(vol["label"].shape) % 7
    data = _data(patches_per_volume=5)
    patches = sample_patches(vol, data, case_rng(0, "case_0"))
    assert len(patches) == 5
    for p in patches:
        assert p["image"].shape == (2, 8, 8, 4) and p["image"].dtype == np.float32
        assert p["label"].shape == (8, 8, 4) and p["label"].dtype == np.uint8
        assert p["case_id"] == "case_0" and p["split"] == "train"
        o = p["origin"]
        assert o.dtype == np.int64 and o.shape == (3,)
        assert all(0 <= a and a + r <= s for a, r, s in zip(o, data.roi, vol["image"].shape[1:]))
        # the patch is exactly the volume's content at its origin
        np.testing.assert_array_equal(p["image"], _crop(vol["image"], o, data.roi))
        np.testing.assert_array_equal(p["label"], _crop(vol["label"], o, data.roi))


def test_float16_and_unlabelled():
    vol = _volume(label=False)
    patches = sample_patches(vol, _data(patch_dtype="float16", patches_per_volume=2), case_rng(0, "a"))
    assert all(p["image"].dtype == np.float16 and "label" not in p for p in patches)


def test_determinism_and_variation():
    vol = _volume()
    data = _data(patches_per_volume=6)

    def origins(seed, case_id="case_0", epoch=0):
        return [tuple(p["origin"]) for p in sample_patches(vol, data, case_rng(seed, case_id, epoch))]

    assert origins(3) == origins(3)
    assert origins(3) != origins(4)
    assert origins(3, epoch=0) != origins(3, epoch=1)
    assert origins(3, case_id="case_1") != origins(3)


def test_case_rng_stable_across_processes():
    # a fixed digest, not Python's per-process salted hash(): a worker with another hash seed agrees
    code = "from rayssl.data.patches import case_rng; print(case_rng(7, 'case_3', 2).integers(0, 2**62))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == case_rng(7, "case_3", 2).integers(0, 2**62)


def test_balanced_hits_foreground_in_expected_fraction():
    vol = _volume(shape=(40, 40, 20))
    vol["label"][30:33, 5:8, 14:16] = 2  # a small labelled box far from the centre
    data = _data(sampling="balanced", pos_fraction=0.25, patches_per_volume=40)
    patches = sample_patches(vol, data, case_rng(1, "case_0"))
    hits = [bool((p["label"] > 0).any()) for p in patches]
    # 10 crops are centred on the box; a uniform 8x8x4 crop touches it with probability
    # (10/33) * (10/33) * (5/17) ~ 0.027, so about 0.8 of the other 30 do
    assert 10 <= sum(hits) <= 15
    # without foreground every crop is uniform (no failure)
    vol["label"][:] = 0
    assert len(sample_patches(vol, data, case_rng(1, "case_0"))) == 40


def test_balanced_all_positive():
    vol = _volume(shape=(40, 40, 20))
    vol["label"][2:4, 35:37, 1:3] = 1  # near a corner: centres get shifted back inside the volume
    patches = sample_patches(vol, _data(sampling="balanced", pos_fraction=1.0, patches_per_volume=8), case_rng(0, "c"))
    assert all((p["label"] > 0).any() for p in patches)


def test_classes_centres_crops_on_each_class_equally():
    vol = _volume(shape=(40, 40, 20))
    vol["label"][:] = 0
    vol["label"][30:33, 5:8, 14:16] = 2  # a small organ far from the centre ...
    vol["label"][5:25, 10:30, 2:12] = 1  # ... and a large one
    data = _data(sampling="classes", patches_per_volume=300)
    patches = sample_patches(vol, data, case_rng(3, "case_0"))
    # the crop centre voxel (roi 8x8x4 -> offset 4,4,2; crops near the border are shifted inside)
    centre = [int(vol["label"][tuple(o + r // 2 for o, r in zip(p["origin"], (8, 8, 4)))]) for p in patches]
    small = sum((p["label"] == 2).any() for p in patches)
    # each of the 3 classes present is picked with probability 1/3; the small organ (18 voxels of
    # 32000) would be in a uniform crop's centre almost never
    assert 70 <= centre.count(1) <= 130 and 70 <= small <= 140
    # unlabelled cases fall back to uniform crops
    assert len(sample_patches({**vol, "label": None}, data, case_rng(3, "case_0"))) == 300


def test_foreground_oversampling_centres_a_fraction_on_each_foreground_class_equally():
    vol = _volume(shape=(40, 40, 20))
    vol["label"][:] = 0
    vol["label"][30:33, 5:8, 14:16] = 2  # a small organ (18 voxels) far from the centre ...
    vol["label"][5:25, 10:30, 2:12] = 1  # ... and a large one (4000 voxels)
    data = _data(sampling="foreground", pos_fraction=1 / 3, patches_per_volume=300)
    patches = sample_patches(vol, data, case_rng(3, "case_0"))
    centre = [int(vol["label"][tuple(o + r // 2 for o, r in zip(p["origin"], (8, 8, 4)))]) for p in patches]
    # round(300 / 3) = 100 crops are centred on a foreground class, each class drawn with probability 1/2 (about
    # 50 each, binomial sd 5); the 200 uniform crops centre on the large organ with probability 4000 / 32000 and on
    # the small one almost never (crops near a border are shifted inside, so a few centres move)
    small = sum(c == 2 for c in centre)
    assert 35 <= small <= 65
    assert 35 + 200 * 0.125 - 20 <= centre.count(1) <= 65 + 200 * 0.125 + 20
    assert 200 * 0.875 - 60 <= centre.count(0) <= 200 * 0.875 + 20  # the background most crops see
    # balanced at the same fraction draws voxels, not classes: the small organ's 18 of 4018 voxels are almost never
    balanced = sample_patches(vol, data.model_copy(update={"sampling": "balanced"}), case_rng(3, "case_0"))
    assert sum(int(vol["label"][tuple(o + r // 2 for o, r in zip(p["origin"], (8, 8, 4)))]) == 2 for p in balanced) < 5
    vol["label"][:] = 0  # no foreground: every crop uniform
    assert len(sample_patches(vol, data, case_rng(3, "case_0"))) == 300


def test_tissue_rejects_mostly_air():
    vol = _volume(shape=(40, 32, 16), label=False)
    vol["image"][:] = 0.0  # air everywhere ...
    vol["image"][:, 24:] = 0.6  # ... except the last 16 slabs along x (40% of the volume is tissue)
    data = _data(sampling="tissue", air_threshold=0.15, min_tissue_fraction=0.5, patches_per_volume=30)
    patches = sample_patches(vol, data, case_rng(0, "g"))
    assert len(patches) == 30
    for p in patches:
        frac = float((p["image"] > 0.15).mean())
        assert frac >= 0.5 and p["tissue_fraction"] == pytest.approx(frac)
    # unconstrained random crops do include mostly-air ones on this volume
    rand = sample_patches(vol, data.model_copy(update={"sampling": "random"}), case_rng(0, "g"))
    assert any(float((p["image"] > 0.15).mean()) < 0.5 for p in rand)


def test_tissue_keeps_best_when_nothing_passes():
    vol = _volume(shape=(24, 24, 8), label=False)
    vol["image"][:] = 0.0
    vol["image"][:, :2, :2] = 1.0  # a tiny tissue column: no crop reaches 50 %
    data = _data(sampling="tissue", min_tissue_fraction=0.5, patches_per_volume=3)
    patches = sample_patches(vol, data, case_rng(0, "g"))
    assert len(patches) == 3
    assert all(p["tissue_fraction"] < 0.5 for p in patches)  # the flag: kept below the minimum
    assert max(p["tissue_fraction"] for p in patches) > 0.0  # the best candidate found, not any
    assert all("dense_fraction" not in p for p in patches)


LUNG, TISSUE = 0.2, 0.55  # ct_genesis scale: -600 HU (lung) and +100 HU (soft tissue)
THRESHOLD = (-150.0 + 1000.0) / 2000.0  # -150 HU on the -1000..1000 HU window: 0.425


def _reference_fraction(volume, origin, roi, threshold=THRESHOLD, len_depth=3):
    # the Models Genesis rule written out voxel by voxel (infinite_generator_3D.py): the first of the
    # next len_depth slices at or above the threshold gives weight 1 - k / (len_depth - 1)
    x0, y0, z0 = origin
    window = volume[x0 : x0 + roi[0], y0 : y0 + roi[1], z0 : z0 + roi[2] + len_depth].tolist()
    total = 0.0
    for i in range(roi[0]):
        for j in range(roi[1]):
            for d in range(roi[2]):
                for k in range(len_depth):
                    if d + k < len(window[i][j]) and window[i][j][d + k] >= threshold:
                        total += 1.0 - k / (len_depth - 1)
                        break
    return total / (roi[0] * roi[1] * roi[2])


def test_genesis_fraction_by_hand():
    from rayssl.data.patches import _genesis_fraction

    vol = np.full((1, 8, 8, 8), LUNG, np.float32)
    vol[0, :, :, 2] = TISSUE  # crop slices 0..3: weights 0, 0.5 (dense next), 1, 0 -> 1.5 / 4
    vol[0, :4, :, 4] = TISSUE  # past the crop: half of slice 3 looks ahead onto it -> + 0.5 * 0.5
    frac = _genesis_fraction(vol, (0, 0, 0), (8, 8, 4), THRESHOLD)
    assert frac == pytest.approx((0.0 + 0.5 + 1.0 + 0.25) / 4)
    assert frac == pytest.approx(_reference_fraction(vol[0], (0, 0, 0), (8, 8, 4)))
    # a voxel two slices ahead weighs 0 (k = len_depth - 1), like none found
    vol[0, :, :, 2] = LUNG
    assert _genesis_fraction(vol, (0, 0, 0), (8, 8, 2), THRESHOLD) == 0.0


def _chest(shape=(48, 40, 24), seed=0):
    # left half lung-like, right half soft tissue, a few dense voxels scattered in the lung
    rng = np.random.default_rng(seed)
    image = np.full((1, *shape), LUNG, np.float32) + rng.normal(0, 0.02, (1, *shape)).astype(np.float32)
    image[:, shape[0] // 2 :] = TISSUE
    image[0][rng.random(shape) < 0.03] = TISSUE
    return {"case_id": "chest", "split": "train", "image": image, "label": None, "target": None}


def test_genesis_keeps_lung_rejects_soft_tissue():
    vol = _chest()
    data = _data(sampling="genesis", recipe="ct_genesis", patches_per_volume=30)
    patches = sample_patches(vol, data, case_rng(0, "chest"))
    assert len(patches) == 30
    for p in patches:
        ref = _reference_fraction(vol["image"][0], tuple(p["origin"]), data.roi)
        assert ref <= 0.15 and p["dense_fraction"] == pytest.approx(ref, abs=1e-6)
        assert p["origin"][0] + data.roi[0] <= 24  # within the lung half
        assert "tissue_fraction" not in p
    # random crops on this volume do include soft-tissue ones, which the rule rejects
    rand = sample_patches(vol, data.model_copy(update={"sampling": "random"}), case_rng(0, "chest"))
    assert any(_reference_fraction(vol["image"][0], tuple(p["origin"]), data.roi) > 0.15 for p in rand)
    # the tissue rule (what genesis sampling did before) keeps soft-tissue crops the reference rejects
    tissue = sample_patches(vol, data.model_copy(update={"sampling": "tissue"}), case_rng(0, "chest"))
    assert any(_reference_fraction(vol["image"][0], tuple(p["origin"]), data.roi) > 0.15 for p in tissue)


def test_genesis_threshold_follows_the_recipe_window():
    from rayssl.data.patches import genesis_threshold

    assert genesis_threshold(_data(sampling="genesis", recipe="ct_genesis")) == pytest.approx(0.425)
    assert genesis_threshold(_data(sampling="genesis", recipe="ct_btcv")) == pytest.approx(25.0 / 425.0)
    assert genesis_threshold(_data(sampling="genesis", recipe="mri_genesis", genesis_threshold=0.3)) == 0.3


def test_genesis_keeps_best_and_flags_when_nothing_passes():
    vol = _chest()
    vol["image"][:] = TISSUE  # no lung anywhere
    vol["image"][0, :6, :6] = LUNG  # a corner of lung: the best crops overlap it, none passes
    data = _data(sampling="genesis", recipe="ct_genesis", patches_per_volume=3)
    patches = sample_patches(vol, data, case_rng(0, "chest"))
    assert len(patches) == 3
    assert all(p["dense_fraction"] > 0.15 for p in patches)  # the flag: kept above the maximum
    assert min(p["dense_fraction"] for p in patches) < 1.0  # the best candidate found, not any


def test_genesis_margins():
    vol = _chest(shape=(80, 70, 30))
    vol["image"][:] = LUNG  # every crop passes: only the margins constrain the origins
    data = _data(sampling="genesis", recipe="ct_genesis", genesis_margin=(20, 15, 6), patches_per_volume=200)
    origins = np.stack([p["origin"] for p in sample_patches(vol, data, case_rng(0, "m"))])
    for axis, (s, r, m) in enumerate(zip((80, 70, 30), data.roi, (20, 15, 6))):
        assert origins[:, axis].min() >= m and origins[:, axis].max() + r <= s - m
        assert origins[:, axis].max() - origins[:, axis].min() >= (s - r - 2 * m) // 2  # still spread out
    # the reference's margins (100, 100, 30) on a small volume shrink instead of failing
    small = _chest(shape=(30, 20, 12))
    small["image"][:] = LUNG
    data = _data(sampling="genesis", recipe="ct_genesis", genesis_margin=(100, 100, 30), patches_per_volume=20)
    origins = np.stack([p["origin"] for p in sample_patches(small, data, case_rng(0, "m"))])
    assert origins.shape == (20, 3)
    for axis, (s, r) in enumerate(zip((30, 20, 12), data.roi)):
        m = (s - r) // 2  # as far in as the volume allows
        assert origins[:, axis].min() >= m and origins[:, axis].max() + r <= s - m


def test_grid_origins_hand_computed():
    assert grid_origins((10,), (4,), 0.0) == [(0,), (4,), (6,)]  # last tile flush with the end
    assert grid_origins((10,), (4,), 0.5) == [(0,), (2,), (4,), (6,)]
    assert grid_origins((4, 5), (4, 5)) == [(0, 0)]
    assert len(grid_origins((10, 9, 8), (4, 4, 4))) == 3 * 3 * 2
    with pytest.raises(ValueError, match="smaller than roi"):
        grid_origins((3, 8), (4, 4))
    with pytest.raises(ValueError, match="overlap"):
        grid_origins((8,), (4,), 1.0)


def test_grid_covers_every_voxel():
    vol = _volume(shape=(21, 13, 10))
    vol["label"][:] = 1
    data = _data(sampling="grid", grid_overlap=0.25)
    patches = sample_patches(vol, data, case_rng(0, "case_0"))
    seen = np.zeros(vol["label"].shape, int)
    for p in patches:
        seen[tuple(slice(o, o + r) for o, r in zip(p["origin"], data.roi))] += 1
        np.testing.assert_array_equal(p["image"], _crop(vol["image"], p["origin"], data.roi))
    assert seen.min() >= 1
    assert len(patches) == len(grid_origins((21, 13, 10), data.roi, 0.25))


def test_padding_small_volume():
    vol = _volume(shape=(5, 9, 3))
    vol["image"] += 2.0  # minimum is > 0: padding uses the minimum, not zero
    vol["label"][:] = 3
    data = _data(roi=(8, 8, 4), patches_per_volume=4)
    image, label = pad_to_roi(vol["image"], vol["label"], data.roi)
    assert image.shape == (1, 8, 9, 4) and label.shape == (8, 9, 4)
    np.testing.assert_array_equal(image[:, :5, :, :3], vol["image"])  # original kept at the start
    assert np.all(image[:, 5:] == vol["image"].min()) and np.all(label[5:] == 0) and np.all(label[:, :, 3] == 0)
    patches = sample_patches(vol, data, case_rng(0, "small"))
    assert len(patches) == 4 and all(p["image"].shape == (1, 8, 8, 4) for p in patches)
    assert all(p["origin"][0] == 0 and p["origin"][2] == 0 for p in patches)


def test_2d_whole_image_and_crops():
    target = [1.0] + [0.0] * 13
    vol = _volume(shape=(16, 16), label=False, target=target)
    whole = sample_patches(vol, DataConfig(roi=(16, 16), patches_per_volume=4), case_rng(0, "x"))
    assert len(whole) == 1  # the roi is the image itself
    np.testing.assert_array_equal(whole[0]["image"], vol["image"])
    assert whole[0]["target"].dtype == np.float32 and whole[0]["target"].shape == (14,)
    crops = sample_patches(vol, DataConfig(roi=(12, 12), patches_per_volume=3), case_rng(0, "x"))
    assert len(crops) == 3 and all(p["image"].shape == (1, 12, 12) for p in crops)
    np.testing.assert_array_equal(crops[0]["target"], np.asarray(target, np.float32))


def test_bad_arguments():
    with pytest.raises(ValueError, match="does not match roi"):
        sample_patches(_volume(), DataConfig(roi=(8, 8)), case_rng(0, "x"))
    vol = _volume()
    vol["label"] = np.zeros((3, 3, 3), np.uint8)
    with pytest.raises(ValueError, match="label shape"):
        sample_patches(vol, _data(), case_rng(0, "x"))
