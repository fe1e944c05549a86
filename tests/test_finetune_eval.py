"""Fine-tuning pieces without Ray: augmentation, classification scoring, 2D weight loading, sliding window."""

import numpy as np
import pytest
import torch
from torch import nn

from rayssl.finetune.augment import RandAugment2D, SegAugment
from rayssl.finetune.evaluate import center_crop, evaluate_classification, evaluate_segmentation, predict_volume
from rayssl.finetune.weights import load_pretrained, resolve_pretrained
from rayssl.models.classifier import ViTClassifier
from rayssl.models.vit import VIT_SIZES, ViTEncoder
from rayssl.models.weights_file import save_export


def test_seg_augment_moves_label_with_image_and_is_seeded():
    torch.manual_seed(0)
    label = (torch.rand(8, 16, 16, 16) > 0.7).long()
    image = 10.0 * label[:, None].float()  # intensity aug keeps label-1 voxels within [8.9, 11.1]
    x1, y1 = SegAugment((16, 16, 16), seed=3)(image, label)
    x2, y2 = SegAugment((16, 16, 16), seed=3)(image, label)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == image.shape and y1.shape == label.shape
    assert torch.equal(x1[:, 0] > 5, y1 == 1)  # geometry applied to both
    assert not torch.equal(y1, label)  # 8 samples: some flip / rotation happened
    assert torch.equal(y1.sum(dim=(1, 2, 3)), label.sum(dim=(1, 2, 3)))  # flips / rot90 keep voxel counts


def test_randaugment_2d_keeps_range_shape_and_targets():
    x = torch.rand(4, 1, 32, 32)
    t = torch.randint(0, 2, (4, 14)).float()
    y, t2 = RandAugment2D(seed=0)(x, t)
    assert y.shape == x.shape and torch.equal(t2, t)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0 and not torch.equal(y, x)


class Brightness(nn.Module):
    """Logit k = (mean intensity - 0.5) * sign_k: finding 0 is "bright", finding 1 "dark"."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([m, -m, torch.zeros_like(m)], dim=1)


def test_evaluate_classification_auc_and_skipped():
    bright = [0.9, 0.8, 0.2, 0.1, 0.7, 0.3]
    images = [{"case_id": f"c{i}", "image": np.full((1, 4, 4), b, np.float32),
               "target": np.array([b > 0.5, b < 0.5, 1.0], np.float32)} for i, b in enumerate(bright)]
    out = evaluate_classification(Brightness(), images, ["bright", "dark", "always"], batch_size=4)
    assert out["auc_bright"] == 1.0 and out["auc_dark"] == 1.0 and out["mean_auc"] == 1.0
    assert out["skipped"] == ["always"] and len(out["rows"]) == 6 and out["rows"][0]["target_bright"] == 1


def test_classifier_loads_2d_encoder_with_interpolated_pos_embed(tmp_path):
    torch.manual_seed(0)
    enc = ViTEncoder(2, (32, 32), 8, 1, **VIT_SIZES["tiny"])
    meta = {"method": "mae", "architecture": "vit", "spatial_dims": 2, "roi": [32, 32], "in_channels": 1,
            "patch_size": 8, **VIT_SIZES["tiny"]}
    st, _ = save_export(enc.state_dict(), meta, tmp_path / "encoder")
    model = ViTClassifier(2, (64, 64), 8, 1, 14, **VIT_SIZES["tiny"])
    report = load_pretrained(model, resolve_pretrained(str(st)))
    assert report["pos_embed_interpolated"] == [[4, 4], [8, 8]]
    assert sorted(report["new"]) == ["head.bias", "head.weight"]
    with pytest.raises(ValueError, match="spatial_dims: checkpoint 2, model 3"):
        load_pretrained(ViTClassifier(3, (32, 32, 32), 8, 1, 14, **VIT_SIZES["tiny"]), resolve_pretrained(str(st)))


class Threshold(nn.Module):
    """Two-class logits from intensity: class 1 where the voxel is above 0.5."""

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5], dim=1) * 10


class Background(nn.Module):
    """Two-class logits that say background everywhere."""

    def forward(self, x):
        return torch.cat([torch.ones_like(x), -torch.ones_like(x)], dim=1)


class OneRegion(nn.Module):
    """Three region logits: the first above 0.5, the others off."""

    def forward(self, x):
        return torch.cat([x - 0.5, -x - 1, -x - 1], dim=1)


def test_sliding_window_evaluation_of_a_whole_volume():
    label = np.zeros((20, 18, 12), np.uint8)
    label[4:10, 3:9, 2:8] = 1
    image = label[None].astype(np.float32)
    logits = predict_volume(Threshold(), image, (8, 8, 8), overlap=0.5)
    assert logits.shape == (1, 2, 20, 18, 12)  # volume not a multiple of the ROI: padded and cropped back
    vol = {"case_id": "a", "image": image, "label": label, "spacing": (2.0, 2.0, 2.0)}
    out = evaluate_segmentation(Threshold(), [vol], "multiclass", 2, ["fg"], (8, 8, 8), keep=1)
    assert out["mean_dice"] == pytest.approx(1.0) and out["hd95_fg"] == pytest.approx(0.0)
    assert np.array_equal(out["predictions"]["a"], label)
    assert out["foreground"] == pytest.approx(216 / (20 * 18 * 12))  # the 6 x 6 x 6 block, predicted exactly
    blank = evaluate_segmentation(Background(), [vol], "multiclass", 2, ["fg"], (8, 8, 8), hd95=False)
    assert blank["foreground"] == 0.0 and blank["mean_dice"] == 0.0  # a collapsed model: nothing predicted
    one_region = evaluate_segmentation(OneRegion(), [vol], "brats_regions", 3, ["tc", "wt", "et"], (8, 8, 8), hd95=False)
    assert one_region["foreground"] == pytest.approx(216 / (20 * 18 * 12))  # regions: every channel is foreground
    assert center_crop(np.zeros((1, 10, 12)), (4, 4)).shape == (1, 4, 4)


def _source(recipe, labels=None, class_names=None, channels=1, dims=3):
    from rayssl.data.sources import Source

    return Source(kind="msd", root="/x", cases=[], spatial_dims=dims, channels=channels, recipe=recipe,
                  labels=labels or {}, class_names=class_names or [])


def test_task_spec_per_source_and_clear_errors():
    from rayssl.config import FinetuneConfig, load_config
    from rayssl.finetune.task import TaskSpec, task_spec

    ct = load_config(FinetuneConfig, "finetune", "tiny")
    spec = task_spec(ct, _source("ct_btcv", {0: "background", 1: "liver", 2: "left kidney"}))
    assert spec == TaskSpec("multiclass", 3, ("liver", "left_kidney"), 1, "dicece")
    brats = load_config(FinetuneConfig, "finetune", "unetr_brats")
    spec = task_spec(brats, _source("mri_brats", {0: "bg", 1: "edema", 2: "ne", 3: "et"}, channels=4))
    assert spec.mode == "brats_regions" and spec.class_names == ("TC", "WT", "ET") and spec.loss == "dice"
    cxr = load_config(FinetuneConfig, "finetune", "vit_cxr14")
    spec = task_spec(cxr, _source("cxr", class_names=[f"f{k}" for k in range(14)], dims=2))
    assert spec.mode == "multilabel" and spec.num_classes == 14 and spec.loss == "bce"
    with pytest.raises(ValueError, match="set task.num_classes"):
        task_spec(load_config(FinetuneConfig, "finetune", "tiny", overrides=["data.recipe=none"]), _source("none"))
    with pytest.raises(ValueError, match="task.loss=bce does not fit"):
        task_spec(load_config(FinetuneConfig, "finetune", "tiny", overrides=["task.loss=bce"]), _source("ct_btcv", {0: "a", 1: "b"}))


def test_brats_loss_scores_enhancing_tumour_as_label_3():
    from rayssl.finetune.labels import BRATS_REGIONS
    from rayssl.finetune.task import SegLoss

    label = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    label[0, 1:7, 1:7, 1:7] = 1
    label[0, 2:6, 2:6, 2:6] = 2
    label[0, 3:5, 3:5, 3:5] = 3
    loss = SegLoss("brats_regions", "dice")

    def logits(regions):  # confident logits for the given region definitions
        return torch.stack([torch.isin(label[0], torch.tensor(v)).float() * 40 - 20 for v in regions])[None]

    right = loss(logits(BRATS_REGIONS.values()), label)
    wrong = loss(logits([(2, 3), (1, 2, 3), (2,)]), label)  # the common bug: ET from label 2
    assert float(right) < 1e-3 < float(wrong)
