"""Fine-tuning networks without Ray: UNETR layout, LLRD learning rates, drop path, weight loading."""

import copy
import math

import pytest
import torch
from torch import nn

from rayssl.config import ConfigError, FinetuneConfig, OptimConfig, load_config
from rayssl.finetune.models import build_model
from rayssl.finetune.weights import load_pretrained, resolve_pretrained
from rayssl.models.classifier import ViTClassifier
from rayssl.models.genesis_unet import BatchStatNorm, GenesisUNet
from rayssl.models.unetr import UNETR, default_hidden_blocks
from rayssl.models.vit import VIT_SIZES, ViTEncoder, interpolate_pos_embed
from rayssl.models.weights_file import save_export
from rayssl.train.optim import NO_DECAY_TOKENS, make_optimizer, make_scheduler, param_groups

TINY = VIT_SIZES["tiny"]  # width 192, depth 4, 3 heads


def tiny_unetr(roi=32, patch=8, channels=1, drop_path=0.0, out=3) -> UNETR:
    return UNETR((roi,) * 3, patch, channels, out, **TINY, drop_path_rate=drop_path, feature_size=4)


def export_vit(tmp_path, roi=32, patch=8, channels=1, size="tiny", seed=0):
    """An MAE-style export of a random ViT encoder: (encoder, path of encoder.safetensors)."""
    torch.manual_seed(seed)
    enc = ViTEncoder(3, (roi,) * 3, patch, channels, **VIT_SIZES[size])
    meta = {"method": "mae", "architecture": "vit", "spatial_dims": 3, "roi": [roi] * 3, "in_channels": channels,
            "patch_size": patch, "size": size, **VIT_SIZES[size]}
    st, _ = save_export(enc.state_dict(), meta, tmp_path / "run" / "export" / "encoder")
    return enc, st


def test_unetr_matches_monai_unetr_numerically():
    """Same decoder weights and ViT hidden states give MONAI's output (monai/networks/nets/unetr.py)."""
    from monai.networks.nets import UNETR as MonaiUNETR

    torch.manual_seed(0)
    ours = UNETR((32,) * 3, 16, 1, 3, embed_dim=96, depth=12, num_heads=4, drop_path_rate=0.0, feature_size=8).eval()
    ref = MonaiUNETR(1, 3, (32,) * 3, feature_size=8, hidden_size=96, mlp_dim=384, num_heads=4, norm_name="instance",
                     res_block=True).eval()
    assert ours.hidden_blocks == (4, 7, 10)
    names = {"encoder1": "stem", "encoder2": "skips.0", "encoder3": "skips.1", "encoder4": "skips.2",
             "decoder5": "ups.0", "decoder4": "ups.1", "decoder3": "ups.2", "decoder2": "ups.3", "out": "head"}
    mapped = {f"{names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in ref.state_dict().items()
              if not k.startswith("vit.")}
    missing, unexpected = ours.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.startswith("encoder.") for k in missing)

    class Hidden(nn.Module):  # MONAI's ViT output: final normed tokens and every block's output, no cls token
        def forward(self, x):
            enc = ours.encoder(x, return_hidden=tuple(range(1, 13)))
            return enc["tokens"][:, 1:], [h[:, 1:] for h in enc["hidden"]]

    ref.vit = Hidden()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        expected = ref(x)
        assert torch.allclose(ours(x), expected, atol=1e-5)
        ours.hidden_blocks = (3, 6, 9)  # one block too shallow: no longer MONAI's output
        assert not torch.allclose(ours(x), expected, atol=1e-3)


def test_unetr_default_hidden_blocks_output_shape_and_errors():
    assert default_hidden_blocks(12, 4) == [4, 7, 10] and default_hidden_blocks(12, 3) == [5, 9]  # SelfMedMAE x8
    assert default_hidden_blocks(4, 3) == [2, 3] and default_hidden_blocks(3, 4) == [1, 2, 3]
    for stages in range(2, 7):
        for depth in range(stages - 1, 30):
            b = default_hidden_blocks(depth, stages)
            assert len(b) == stages - 1 and 1 <= b[0] and b[-1] <= depth and all(x < y for x, y in zip(b, b[1:]))
    y = tiny_unetr()(torch.randn(2, 1, 32, 32, 32))
    assert y.shape == (2, 3, 32, 32, 32)
    with pytest.raises(ValueError, match="power-of-two"):
        tiny_unetr(patch=6, roi=36)
    for bad in ([1, 2, 3], [3, 2], [2, 2]):
        with pytest.raises(ValueError, match="hidden_blocks"):
            UNETR((32,) * 3, 8, 1, 3, **TINY, hidden_blocks=bad)


def test_classifier_pools_and_head():
    x = torch.randn(3, 1, 32, 32)
    for pool in ("cls", "mean"):
        m = ViTClassifier(2, (32, 32), 8, 1, 14, **TINY, pool=pool)
        assert m(x).shape == (3, 14)
    with pytest.raises(ValueError, match="pool"):
        ViTClassifier(2, (32, 32), 8, 1, 14, **TINY, pool="max")


def test_llrd_exact_learning_rates_per_block():
    model = tiny_unetr()
    lr, decay = 1e-3, 0.5
    groups = param_groups(model, 0.05, decay, NO_DECAY_TOKENS, lr)
    optim = OptimConfig(schedule="constant", warmup_epochs=0)
    opt = make_optimizer(optim, lr)([{k: v for k, v in g.items() if k != "names"} for g in groups])
    sched = make_scheduler(opt, optim, lr, total_steps=10, steps_per_epoch=5)
    opt.step()
    sched.step()
    lr_of = {n: pg["lr"] for g, pg in zip(groups, opt.param_groups) for n in g["names"]}
    depth = TINY["depth"]
    assert set(lr_of) == {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        "encoder.patch_embed.weight": lr * decay ** (depth + 1),  # embeddings: id 0
        "encoder.pos_embed": lr * decay ** (depth + 1),
        "encoder.cls_token": lr * decay ** (depth + 1),
        "encoder.blocks.0.attn.qkv.weight": lr * decay ** depth,  # block i: id i + 1
        "encoder.blocks.2.mlp.fc1.bias": lr * decay ** 2,
        "encoder.blocks.3.norm1.weight": lr * decay,
        "encoder.norm.weight": lr,
        "head.conv.conv.weight": lr,  # decoder and head: full lr
        "stem.layer.conv1.conv.weight": lr,
    }
    for name, value in expected.items():
        assert lr_of[name] == pytest.approx(value, rel=1e-12), name
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert wd["encoder.blocks.0.attn.qkv.weight"] == 0.05 and wd["encoder.blocks.0.attn.qkv.bias"] == 0.0
    assert wd["encoder.pos_embed"] == 0.0 and wd["head.conv.conv.weight"] == 0.05


def test_drop_path_active_in_train_off_in_eval():
    x = torch.randn(2, 1, 32, 32, 32)
    torch.manual_seed(0)
    model = tiny_unetr(drop_path=0.5)
    assert model.encoder.blocks[-1].drop_path1.drop_prob == pytest.approx(0.5)
    model.train()
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    torch.manual_seed(0)
    plain = tiny_unetr(drop_path=0.0).train()
    assert torch.equal(plain(x), plain(x))  # without drop path, train mode is deterministic


def test_all_encoder_weights_load_and_reproduce_features(tmp_path):
    enc, st = export_vit(tmp_path)
    torch.manual_seed(1)
    model = tiny_unetr()
    report = load_pretrained(model, resolve_pretrained(str(tmp_path / "run")))  # a run directory
    assert report["source"] == str(st.resolve()) and report["method"] == "mae"
    assert report["loaded"] == sorted(f"encoder.{k}" for k in enc.state_dict())
    assert report["pos_embed_interpolated"] is None
    assert not any(n.startswith("encoder.") for n in report["new"]) and "head.conv.conv.weight" in report["new"]
    x = torch.randn(1, 1, 32, 32, 32)
    enc.eval(), model.eval()
    with torch.no_grad():
        assert torch.allclose(model.encoder(x)["tokens"], enc(x)["tokens"], atol=1e-6)
    scratch = load_pretrained(tiny_unetr(), resolve_pretrained("none"))
    assert scratch["source"] is None and scratch["loaded"] == []


def test_pos_embed_interpolated_when_roi_differs(tmp_path):
    enc, st = export_vit(tmp_path, roi=32)
    model = tiny_unetr(roi=48)
    report = load_pretrained(model, resolve_pretrained(str(st)))
    assert report["pos_embed_interpolated"] == [[4, 4, 4], [6, 6, 6]]
    expected = interpolate_pos_embed(enc.pos_embed.detach(), (4, 4, 4), (6, 6, 6))
    assert torch.equal(model.encoder.pos_embed.detach(), expected)
    assert model.encoder.pos_embed.requires_grad  # learnable during fine-tuning
    assert torch.equal(model.encoder.blocks[2].mlp.fc2.weight, enc.blocks[2].mlp.fc2.weight)


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch=16), "patch_size: checkpoint 8, model 16"),
    (dict(channels=4), "in_channels: checkpoint 1, model 4"),
])  # fmt: skip
def test_mismatched_encoder_is_a_clear_error(tmp_path, kwargs, message):
    _, st = export_vit(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_pretrained(tiny_unetr(**kwargs), resolve_pretrained(str(st)))


def test_mismatched_width_and_architecture(tmp_path):
    _, st = export_vit(tmp_path, size="small")
    with pytest.raises(ValueError, match=r"embed_dim \(width\): checkpoint 384, model 192"):
        load_pretrained(tiny_unetr(), resolve_pretrained(str(st)))
    unet = GenesisUNet(1, 1, 4, "instance")
    save_export(unet.state_dict(), {"method": "genesis", "architecture": "genesis_unet", "base_channels": 4,
                                    "norm": "instance", "in_channels": 1}, tmp_path / "g" / "export" / "unet")
    with pytest.raises(ValueError, match="needs a ViT encoder"):
        load_pretrained(tiny_unetr(), resolve_pretrained(str(tmp_path / "g")))
    with pytest.raises(ValueError, match="does not exist"):
        load_pretrained(tiny_unetr(), resolve_pretrained(str(tmp_path / "nowhere.safetensors")))


def test_tampered_checkpoint_lists_missing_and_wrong_shapes(tmp_path):
    enc, _ = export_vit(tmp_path)
    state = enc.state_dict()
    del state["blocks.1.attn.qkv.weight"]
    state["norm.weight"] = torch.ones(7)
    meta = {"method": "mae", "architecture": "vit", "spatial_dims": 3, "roi": [32] * 3, "in_channels": 1, "patch_size": 8, **TINY}
    st, _ = save_export(state, meta, tmp_path / "bad" / "encoder")
    with pytest.raises(ValueError, match=r"missing in checkpoint: encoder.blocks.1.attn.qkv.weight[\s\S]*encoder.norm.weight: checkpoint \[7\]"):
        load_pretrained(tiny_unetr(), resolve_pretrained(str(st)))


def test_genesis_unet_loads_body_and_gets_a_new_head(tmp_path):
    torch.manual_seed(0)
    pre = GenesisUNet(1, 1, 4, "instance")
    save_export(pre.state_dict(), {"method": "genesis", "architecture": "genesis_unet", "base_channels": 4,
                                   "norm": "instance", "in_channels": 1}, tmp_path / "g" / "export" / "unet")
    torch.manual_seed(1)
    model = GenesisUNet(1, 5, 4, "instance", sigmoid=False)
    report = load_pretrained(model, resolve_pretrained(str(tmp_path / "g")))
    assert sorted(report["new"]) == ["out.conv.bias", "out.conv.weight"]
    assert all(torch.equal(model.state_dict()[k], pre.state_dict()[k]) for k in report["loaded"])
    with pytest.raises(ValueError, match="base_channels: checkpoint 4, model 8"):
        load_pretrained(GenesisUNet(1, 5, 8, "instance"), resolve_pretrained(str(tmp_path / "g")))


def test_genesis_batch_norm_uses_batch_statistics_in_eval():
    """As ``ContBatchNorm3d`` (ModelsGenesis pytorch/unet3d.py): eval normalises with batch statistics."""
    torch.manual_seed(0)
    net = GenesisUNet(1, 2, 4, "batch")
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 14 and all(isinstance(m, BatchStatNorm) for m in norms)
    x = torch.rand(2, 1, 16, 16, 16)
    train_copy = copy.deepcopy(net).train()
    with torch.no_grad():
        expected = train_copy(x)
        assert all(m.running_mean.abs().sum() > 0 for m in train_copy.modules() if isinstance(m, BatchStatNorm))
        for m in norms:  # running statistics that would change a standard BatchNorm's eval output
            m.running_mean.fill_(3.0), m.running_var.fill_(5.0)
        net.eval()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        assert torch.allclose(net(x), expected, atol=1e-6)
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # eval leaves buffers alone
        assert not torch.allclose(net(x[:1]), expected[:1], atol=1e-4)  # a sample's output depends on its batch
        assert net(torch.rand(2, 1, 8, 8, 8)).shape == (2, 2, 8, 8, 8)
    with pytest.raises(ValueError, match="bottleneck voxel"):
        net(torch.rand(1, 1, 8, 8, 8))  # one value per channel: no batch statistics


def test_resolve_pretrained_glob_picks_newest_run(tmp_path):
    import os

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    export_vit(tmp_path / "a")
    _, second = export_vit(tmp_path / "b")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny-mae-3").mkdir()  # a run without exported weights is ignored
    for name, src in (("tiny-mae-1", tmp_path / "a" / "run"), ("tiny-mae-2", tmp_path / "b" / "run")):
        os.symlink(src, tmp_path / "runs" / name)
    os.utime(tmp_path / "runs" / "tiny-mae-1", (1, 1), follow_symlinks=True)
    assert resolve_pretrained(str(tmp_path / "runs" / "tiny-mae-*")) == second.resolve()
    with pytest.raises(ValueError, match="no pre-training run"):
        resolve_pretrained(str(tmp_path / "runs" / "nothing-*"))
    assert resolve_pretrained("none") is None and resolve_pretrained("None") is None


def test_config_builds_each_architecture_and_rejects_bad_ones():
    base = ["data.roi=[32,32,32]", "model.size=tiny", "model.patch_size=8", "model.feature_size=4"]
    cfg = load_config(FinetuneConfig, "finetune", "tiny", overrides=base)
    assert isinstance(build_model(cfg, 1, 8), UNETR)
    cfg = load_config(FinetuneConfig, "finetune", "tiny", overrides=base + ["model.arch=genesis_unet", "model.unet_base_channels=4"])
    assert isinstance(build_model(cfg, 1, 8), GenesisUNet)
    for preset in ("unetr_btcv", "unetr_brats", "genesis_seg", "vit_cxr14"):
        assert load_config(FinetuneConfig, "finetune", preset).preset is None  # every preset validates
    with pytest.raises(ConfigError, match="needs a 3D data.roi"):
        load_config(FinetuneConfig, "finetune", "tiny", overrides=["data.roi=[32,32]"])
    with pytest.raises(ConfigError, match="model.arch"):
        load_config(FinetuneConfig, "finetune", "tiny", overrides=["model.arch=vnet"])
    assert math.isclose(load_config(FinetuneConfig, "finetune", "vit_cxr14").model.layer_decay, 0.75)
