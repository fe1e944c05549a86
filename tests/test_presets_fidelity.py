"""The SelfMedMAE-derived presets, augmentation and losses match the reference (cvlab-stonybrook/SelfMedMAE).

Reference values: ``configs/mae3d_btcv_1gpu.yaml``, ``mae3d_msdbrats_1gpu.yaml``, ``unetr_btcv_1gpu.yaml``,
``unetr_msdbrats_1gpu.yaml`` and ``mae_cxr14.yaml`` (lr per 256 samples: ``lib/trainers/base_trainer.py``
``init_lr``), overridden where the run scripts behind the published numbers override them
(``scripts/run_mae3d+unetr_btcv.sh``: ``--mask_ratio=0.125``, fine-tuning ``--lr=3.44e-2 --batch_size=6``;
``scripts/run_mae3d+unetr_msdbrats.sh``: ``--mask_ratio=0.125 --epochs=500``, fine-tuning ``--lr=1.72e-2
--epochs=300``; the configs' own values are the ``*_config`` presets), ``lib/data/med_transforms.py``
(fine-tuning augmentation), ``lib/trainers/seg_trainer.py`` (losses).
"""

import pytest
import torch

from rayssl.config import FinetuneConfig, PretrainConfig, load_config
from rayssl.train.optim import effective_lr

REF_BATCH = 6  # batch_size of every SelfMedMAE 3D config (1 GPU), in volumes
# a step of SelfMedMAE averages over batch_size x num_samples crops (MONAI's list collate); rayssl's total
# batch counts crops, so a preset matches the reference when its lr for that many crops is the reference's
REF_CROPS = {"mae3d_btcv": 6 * 4, "mae3d_brats": 6 * 4, "unetr_btcv": 6 * 4, "unetr_brats": 6 * 1}


@pytest.mark.parametrize("preset, mask, epochs, warmup", [
    ("mae3d_btcv", 0.125, 10000, 100), ("mae3d_btcv_config", 0.75, 10000, 100),
    ("mae3d_brats", 0.125, 500, 10), ("mae3d_brats_config", 0.75, 1000, 10)])
def test_mae3d_presets_reference_lr_and_schedule(preset, mask, epochs, warmup):
    cfg = load_config(PretrainConfig, "pretrain", preset)
    assert cfg.model.mask_ratio == mask
    preset = preset.removesuffix("_config")
    # lr 6.4e-3 per 256 volumes -> 1.5e-4 for the reference's 6 volumes x 4 crops, and it follows the batch
    crops = REF_CROPS[preset]
    assert effective_lr(cfg.optim, crops) == pytest.approx(6.4e-3 * REF_BATCH / 256, rel=1e-6)
    assert effective_lr(cfg.optim, 2 * crops) == pytest.approx(3.0e-4, rel=1e-6)
    assert cfg.data.patches_per_volume == 4 and cfg.data.flip_prob == pytest.approx(0.2)
    assert tuple(cfg.optim.betas) == (0.9, 0.95) and cfg.optim.weight_decay == pytest.approx(0.05)
    assert cfg.optim.optimizer == "adamw" and cfg.optim.schedule == "cosine" and cfg.optim.min_lr == 0.0
    assert (cfg.epochs, cfg.optim.warmup_epochs) == (epochs, warmup)


def test_mae2d_cxr14_keeps_the_2d_mae_rule():
    cfg = load_config(PretrainConfig, "pretrain", "mae2d_cxr14")
    assert effective_lr(cfg.optim, 256) == pytest.approx(1.5e-4, rel=1e-6)  # mae_cxr14.yaml / facebookresearch/mae
    assert tuple(cfg.optim.betas) == (0.9, 0.95)
    assert (cfg.epochs, cfg.optim.warmup_epochs) == (800, 40)


@pytest.mark.parametrize("preset, base, epochs, warmup", [
    ("unetr_btcv", 3.44e-2, 5000, 50), ("unetr_btcv_config", 4.3e-3, 5000, 50),
    ("unetr_brats", 1.72e-2, 300, 10), ("unetr_brats_config", 3.44e-2, 400, 10)])
def test_unetr_presets_reference_lr_betas_and_schedule(preset, base, epochs, warmup):
    cfg = load_config(FinetuneConfig, "finetune", preset)
    preset = preset.removesuffix("_config")
    lr6 = effective_lr(cfg.optim, REF_CROPS[preset])
    assert lr6 == pytest.approx(base * REF_BATCH / 256, rel=1e-6)
    assert cfg.data.patches_per_volume == REF_CROPS[preset] // REF_BATCH
    assert effective_lr(cfg.optim, 4 * REF_CROPS[preset]) == pytest.approx(4 * lr6, rel=1e-6)  # scaled, not fixed
    assert tuple(cfg.optim.betas) == (0.9, 0.95) and cfg.optim.weight_decay == pytest.approx(0.05)
    assert cfg.optim.schedule == "cosine" and cfg.model.layer_decay == pytest.approx(0.75)
    assert cfg.model.drop_path == pytest.approx(0.1)
    assert (cfg.epochs, cfg.optim.warmup_epochs) == (epochs, warmup)
    assert cfg.augment is True


def test_unetr_effective_lr_values():
    lr = lambda preset: effective_lr(load_config(FinetuneConfig, "finetune", preset).optim,  # noqa: E731
                                     REF_CROPS[preset.removesuffix("_config")])
    assert lr("unetr_btcv") == pytest.approx(8.06e-4, rel=1e-3)  # the script's, the run name's "lr3.44e-2"
    assert lr("unetr_btcv_config") == pytest.approx(1.0e-4, rel=1e-2)
    assert lr("unetr_brats") == pytest.approx(4.03e-4, rel=1e-3)  # 1.72e-2 x 6 / 256
    assert lr("unetr_brats_config") == pytest.approx(8.06e-4, rel=1e-3)
    # augment=false still switches augmentation off
    assert load_config(FinetuneConfig, "finetune", "unetr_btcv", overrides=["augment=false"]).augment is False


def test_seg_augment_probabilities_match_reference():
    from rayssl.finetune.augment import SegAugment

    n, roi = 400, (8, 8, 8)
    image = torch.ones(n, 1, *roi)  # flips / rot90 keep a constant image: only intensity changes it
    label = torch.zeros(n, *roi, dtype=torch.long)
    label[:, :3, :2, :1] = 1  # asymmetric: any flip / rot90 (or most compositions) moves it
    x, y = SegAugment(roi, seed=0)(image, label)
    intensity = (x != 1).flatten(1).any(1).float().mean().item()
    # scale p=0.1 and shift p=0.1, independent: 1 - 0.9^2 = 0.19 (was 1 - 0.5^2 = 0.75)
    assert 0.12 < intensity < 0.27, intensity
    geometry = (y != label).flatten(1).any(1).float().mean().item()
    # 3 flips + rot90, each p=0.2: about 1 - 0.8^4 = 0.59 (minus the rare compositions that cancel)
    assert 0.48 < geometry < 0.68, geometry


def _logits_and_labels(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(2, k, 8, 8, 8, generator=g)
    label = torch.randint(0, 4 if k == 3 else k, (2, 8, 8, 8), generator=g)
    label[1][label[1] == 2] = 0  # one channel empty in one sample: exercises the smoothing terms
    return logits, label


def test_seg_loss_multiclass_is_selfmedmae_dicece():
    from monai.losses import DiceCELoss

    from rayssl.finetune.task import SegLoss

    logits, label = _logits_and_labels(5)
    ours = SegLoss("multiclass", "dicece")(logits, label)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)(
        logits, label[:, None].float())
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-7)
    default = DiceCELoss(to_onehot_y=True, softmax=True)(logits, label[:, None].float())
    assert not torch.allclose(ours, default, rtol=1e-4)  # the options make a difference


def test_seg_loss_brats_is_selfmedmae_dice():
    from monai.losses import DiceLoss

    from rayssl.finetune.labels import brats_regions
    from rayssl.finetune.task import SegLoss

    logits, label = _logits_and_labels(3)
    ours = SegLoss("brats_regions", "dice")(logits, label)
    ref = DiceLoss(sigmoid=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)(logits, brats_regions(label))
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-7)
    default = DiceLoss(sigmoid=True)(logits, brats_regions(label))
    assert not torch.allclose(ours, default, rtol=1e-4)


def test_a_preset_on_a_base_takes_the_bases_values_under_its_own(tmp_path, monkeypatch):
    from rayssl.config import ConfigError

    base = load_config(PretrainConfig, "pretrain", "mae3d_btcv")
    variant = load_config(PretrainConfig, "pretrain", "mae3d_btcv_config")
    assert variant.model.mask_ratio == 0.75 and base.model.mask_ratio == 0.125
    assert variant.model_dump(exclude={"model", "preset"}) == base.model_dump(exclude={"model", "preset"})
    assert variant.model.model_dump(exclude={"mask_ratio"}) == base.model.model_dump(exclude={"mask_ratio"})
    import rayssl.config as config

    presets = tmp_path / "presets" / "pretrain"
    presets.mkdir(parents=True)
    (presets / "a.yaml").write_text("base: b\n")
    (presets / "b.yaml").write_text("base: a\n")
    monkeypatch.setattr(config.resources, "files", lambda _: tmp_path)
    monkeypatch.setattr(config, "preset_names", lambda job: ["a", "b"])
    with pytest.raises(ConfigError, match="pretrain presets a -> b -> a: a preset cannot be its own base"):
        load_config(PretrainConfig, "pretrain", "a")
