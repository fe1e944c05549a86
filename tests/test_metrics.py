"""Dice / HD95 / AUC against hand-computed values; BraTS regions from MSD labels."""

import math

import numpy as np
import pytest
import torch

from rayssl.finetune.labels import brats_regions, discretise, one_hot, regions_to_labels, to_label_map
from rayssl.finetune.metrics import dice_hd95, multilabel_auc, nanmean


def two_channel(mask: np.ndarray) -> torch.Tensor:
    """Binary foreground ``[X, Y, Z]`` -> one-hot ``[1, 2, X, Y, Z]`` (background, foreground)."""
    fg = torch.as_tensor(mask, dtype=torch.float32)
    return torch.stack([1 - fg, fg])[None]


def test_dice_of_half_overlapping_cubes():
    target, pred = np.zeros((6, 6, 6)), np.zeros((6, 6, 6))
    target[0:2, 0:2, 0:2] = 1  # 8 voxels
    pred[0:2, 0:2, 1:3] = 1  # 8 voxels, 4 shared
    out = dice_hd95(two_channel(pred), two_channel(target), hd95=False)
    assert out["dice"].shape == (1, 1)  # background excluded
    assert out["dice"][0, 0] == pytest.approx(2 * 4 / 16)
    both = dice_hd95(two_channel(pred), two_channel(target), include_background=True, hd95=False)["dice"][0]
    bg_inter = 216 - 12  # background voxels shared: all but the union of the two cubes
    assert both[0] == pytest.approx(2 * bg_inter / (208 + 208))


def test_hd95_uses_spacing_in_mm():
    target, pred = np.zeros((6, 6, 8)), np.zeros((6, 6, 8))
    target[1, 1, 1] = 1
    pred[1, 1, 4] = 1  # 3 voxels apart along z
    out = dice_hd95(two_channel(pred), two_channel(target), spacing=(1.0, 1.0, 2.5))
    assert out["hd95"][0, 0] == pytest.approx(3 * 2.5)
    assert out["dice"][0, 0] == 0.0
    voxels = dice_hd95(two_channel(pred), two_channel(target))
    assert voxels["hd95"][0, 0] == pytest.approx(3.0)


def test_hd95_is_95th_percentile_of_surface_distances():
    # target: a 1-voxel-thick line of 40 voxels; prediction: the same line, 2 of its voxels moved by 5
    # along y. Directed distances: 38 zeros and two 5s from each side -> 95th percentile over 40
    # values is between 0 and 5 as numpy's linear interpolation gives.
    target, pred = np.zeros((40, 8, 3)), np.zeros((40, 8, 3))
    target[:, 1, 1] = 1
    pred[:, 1, 1] = 1
    pred[[10, 30], 1, 1] = 0
    pred[[10, 30], 6, 1] = 1
    d_pred = np.zeros(40)
    d_pred[[10, 30]] = 5.0  # moved voxels are 5 away from the line
    d_target = np.zeros(40)
    d_target[[10, 30]] = 1.0  # target voxels 10, 30 lost their partner; nearest is the neighbour
    expected = max(np.percentile(d_pred, 95), np.percentile(d_target, 95))
    out = dice_hd95(two_channel(pred), two_channel(target))
    assert expected == pytest.approx(0.25) and out["hd95"][0, 0] == pytest.approx(expected, rel=1e-5)


def test_empty_masks_give_nan_not_crash():
    empty, some = np.zeros((4, 4, 4)), np.zeros((4, 4, 4))
    some[1, 1, 1] = 1
    out = dice_hd95(two_channel(empty), two_channel(some), spacing=(1, 1, 1))
    assert out["dice"][0, 0] == 0.0 and math.isnan(out["hd95"][0, 0])
    out = dice_hd95(two_channel(empty), two_channel(empty))
    assert math.isnan(out["dice"][0, 0]) and math.isnan(out["hd95"][0, 0])
    assert nanmean([np.nan, 0.5, 1.0]) == 0.75 and math.isnan(nanmean([np.nan]))


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="must both be"):
        dice_hd95(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4))


def test_auc_hand_computed_and_against_sklearn():
    from sklearn.metrics import roc_auc_score

    y = np.array([[0, 1], [0, 0], [1, 1], [1, 0]])
    s = np.array([[0.1, 0.9], [0.4, 0.2], [0.35, 0.3], [0.8, 0.5]])
    out = multilabel_auc(y, s, ["a", "b"])
    # a: positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs ordered -> 0.75
    # b: positives {0.9, 0.3} vs negatives {0.2, 0.5}: 0.9 beats both, 0.3 beats 0.2 -> 0.75
    assert out["per_class"] == {"a": 0.75, "b": 0.75} and out["mean_auc"] == 0.75 and out["skipped"] == []
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, (50, 5)), rng.normal(size=(50, 5))
    out = multilabel_auc(y, s)
    assert out["mean_auc"] == pytest.approx(np.mean([roc_auc_score(y[:, k], s[:, k]) for k in range(5)]))


def test_auc_skips_single_class_findings():
    y = np.array([[0, 1, 1], [1, 1, 0], [0, 1, 1], [1, 1, 0]])
    s = np.array([[0.2, 0.1, 0.9], [0.9, 0.2, 0.1], [0.1, 0.3, 0.8], [0.7, 0.4, 0.3]])
    out = multilabel_auc(y, s, ["x", "always", "z"])
    assert out["skipped"] == ["always"] and set(out["per_class"]) == {"x", "z"} and out["mean_auc"] == 1.0
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        multilabel_auc(y, s[:, :2])


def test_brats_regions_follow_msd_dataset_json():
    label = torch.tensor([[0, 1, 2, 3]])  # background, edema, non-enhancing, enhancing
    r = brats_regions(label)  # [1, 3, 4]: TC, WT, ET
    assert r[0, 0].tolist() == [0, 0, 1, 1]  # TC = 2 or 3
    assert r[0, 1].tolist() == [0, 1, 1, 1]  # WT = 1, 2 or 3
    assert r[0, 2].tolist() == [0, 0, 0, 1]  # ET = 3 only (not 2)
    assert regions_to_labels(r).tolist() == label.tolist()


def test_one_hot_and_discretise():
    label = torch.tensor([[0, 2, 1]])
    oh = one_hot(label, 3)
    assert oh.shape == (1, 3, 3) and oh[0, :, 1].tolist() == [0, 0, 1]
    assert to_label_map(discretise(oh * 5.0, "multiclass"), "multiclass").tolist() == label.tolist()
    with pytest.raises(ValueError, match="num_classes=2"):
        one_hot(label, 2)
