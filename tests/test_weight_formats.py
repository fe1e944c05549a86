"""Published weight layouts in (timm, facebookresearch/mae, MONAI, SelfMedMAE, Models Genesis) and out (timm,
MONAI, TorchScript), each built in-process from the library that defines it or from its documented key names."""

import json

import pytest
import torch
from safetensors.torch import save_file

from rayssl.config import FinetuneConfig, dump_config, load_config
from rayssl.finetune.weights import load_pretrained, resolve_pretrained
from rayssl.models.classifier import ViTClassifier
from rayssl.models.genesis_unet import GenesisUNet
from rayssl.models.mae import MaskedAutoencoder
from rayssl.models.unetr import UNETR

from conftest import TINY_VIT


def _timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, in_chans=1, num_classes=0, **TINY_VIT).eval()


@pytest.mark.parametrize("layout", ["mae_pth", "timm_safetensors"])
def test_timm_and_mae_vits_load_into_the_2d_encoder_with_equal_outputs(tmp_path, layout):
    timm_vit = _timm_vit()
    state = timm_vit.state_dict()
    if layout == "mae_pth":  # facebookresearch/mae main_pretrain.py saves {"model": ...} with the decoder too
        path = tmp_path / "mae_pretrain_vit_tiny.pth"
        decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.zeros(32, 48),
                   "decoder_pred.weight": torch.zeros(64, 32)}
        torch.save({"model": {**state, **decoder}, "epoch": 799}, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = ViTClassifier(2, (32, 32), 8, 1, 14, **TINY_VIT).eval()
    report = load_pretrained(model, resolve_pretrained(str(path)))
    assert report["format"] == "timm" and not [k for k in report["new"] if k.startswith("encoder.")]
    assert report["skipped"] == (sorted(["decoder_embed.weight", "decoder_pred.weight", "mask_token"])
                                 if layout == "mae_pth" else [])
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x)["tokens"], timm_vit.forward_features(x), atol=1e-5, rtol=1e-5)


def test_monai_vit_loads_into_the_3d_encoder():
    from monai.networks.nets import ViT

    torch.manual_seed(0)
    ref = ViT(1, (32, 32, 32), 16, hidden_size=48, mlp_dim=192, num_layers=2, num_heads=3, classification=True,
              num_classes=2, qkv_bias=False).eval()
    model = UNETR((32, 32, 32), 16, 1, 3, **dict(TINY_VIT, depth=4), drop_path_rate=0.0)
    model.encoder.blocks = model.encoder.blocks[:2]  # the MONAI ViT's depth
    model.encoder.depth = 2
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        torch.save(ref.state_dict(), f"{d}/vit.pt")
        report = load_pretrained(model, resolve_pretrained(f"{d}/vit.pt"))
    assert report["format"] == "monai_vit" and report["skipped"] == sorted(
        k for k in ref.state_dict() if k.startswith(("classification_head", "blocks.0.norm_cross", "blocks.1.norm_cross")))
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():  # MONAI's ViT features: patch embedding + position, the cls token first, blocks, norm
        t = ref.patch_embedding(x)
        t = torch.cat([ref.cls_token.expand(2, -1, -1), t], dim=1)
        for blk in ref.blocks:
            t = blk(t)
        expected = ref.norm(t)
        # the same network up to LayerNorm's eps (MONAI 1e-5, rayssl 1e-6 as MAE)
        torch.testing.assert_close(model.encoder.eval()(x)["tokens"], expected, atol=2e-3, rtol=1e-3)


def test_monai_unetr_loads_encoder_and_decoder():
    from monai.networks.nets import UNETR as MonaiUNETR

    torch.manual_seed(0)
    ref = MonaiUNETR(1, 3, (32, 32, 32), feature_size=8, hidden_size=48, mlp_dim=192, num_heads=3)
    ours = UNETR((32, 32, 32), 16, 1, 3, embed_dim=48, depth=12, num_heads=3, feature_size=8)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, f"{d}/unetr.safetensors")
        report = load_pretrained(ours, resolve_pretrained(f"{d}/unetr.safetensors"))
    assert report["format"] == "monai_unetr" and report["new"] == ["encoder.cls_token"]  # MONAI's ViT has none
    mine = ours.state_dict()
    assert torch.equal(mine["head.conv.conv.weight"], ref.state_dict()["out.conv.conv.weight"])
    assert torch.equal(mine["encoder.blocks.5.mlp.fc2.weight"], ref.state_dict()["vit.blocks.5.mlp.linear2.weight"])
    assert torch.equal(mine["encoder.pos_embed"][:, 1:], ref.state_dict()["vit.patch_embedding.position_embeddings"])
    assert torch.equal(mine["encoder.blocks.0.attn.qkv.bias"], torch.zeros(144))  # MONAI: no qkv bias


def test_selfmedmae_checkpoint_loads_the_3d_mae_encoder(tmp_path):
    torch.manual_seed(0)
    mae = MaskedAutoencoder(3, (32, 32, 32), 16, 1, **TINY_VIT, decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=3)
    enc = mae.encoder.eval()
    # SelfMedMAE lib/models/mae3d.py: encoder.patch_embed.proj (Conv3d), encoder.cls_token, encoder.blocks,
    # encoder.norm, the fixed encoder_pos_embed without a cls row; decoder, encoder_to_decoder, mask_token
    state = {"encoder.patch_embed.proj.weight": enc.patch_embed.weight, "encoder.patch_embed.proj.bias": enc.patch_embed.bias,
             "encoder.cls_token": enc.cls_token, "encoder_pos_embed": enc.pos_embed[:, 1:],
             **{f"encoder.{k}": v for k, v in enc.state_dict().items() if k.startswith(("blocks.", "norm."))},
             "encoder_to_decoder.weight": torch.zeros(24, 48), "mask_token": torch.zeros(1, 1, 24),
             "decoder.blocks.0.norm1.weight": torch.ones(24), "decoder_pos_embed": torch.zeros(1, 8, 24)}
    torch.save({"epoch": 10000, "state_dict": {f"module.{k}": v.detach().clone() for k, v in state.items()}},
               tmp_path / "checkpoint_9999.pth.tar")
    model = UNETR((32, 32, 32), 16, 1, 3, **dict(TINY_VIT, depth=4), drop_path_rate=0.0)
    model.encoder.blocks, model.encoder.depth = model.encoder.blocks[:2], 2
    report = load_pretrained(model, resolve_pretrained(str(tmp_path / "checkpoint_9999.pth.tar")))
    assert report["format"] == "selfmedmae" and report["method"] == "mae"
    assert set(report["skipped"]) == {"encoder_to_decoder.weight", "mask_token", "decoder.blocks.0.norm1.weight",
                                      "decoder_pos_embed"}
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.eval()(x)["tokens"], enc(x)["tokens"], atol=1e-5, rtol=1e-5)


def _genesis_reference_state(unet: GenesisUNet) -> dict:
    """A rayssl Genesis U-Net's tensors under the reference UNet3D's names (pytorch/unet3d.py), as in
    Genesis_Chest_CT.pt: ``{"state_dict": {"module.down_tr64.ops.0.conv1.weight": ...}}``."""
    from rayssl.models.convert import GENESIS_LEVELS

    back = {v: k for k, v in GENESIS_LEVELS.items()}
    out = {}
    for k, v in unet.state_dict().items():
        parts = k.split(".")
        if parts[0] in ("down", "up") and parts[3] in ("conv", "adn"):
            part = "conv1" if parts[3] == "conv" else "bn1"
            out[f"{back[f'{parts[0]}.{parts[1]}']}.ops.{parts[2]}.{part}.{parts[-1]}"] = v
        elif parts[0] == "up_conv":
            out[f"{['up_tr256', 'up_tr128', 'up_tr64'][int(parts[1])]}.up_conv.{parts[-1]}"] = v
        elif parts[0] == "out":
            out[f"out_tr.final_conv.{parts[-1]}"] = v
    return {"state_dict": {f"module.{k}": v.clone() for k, v in out.items()}}


def test_models_genesis_released_unet_loads_into_the_genesis_unet(tmp_path):
    torch.manual_seed(0)
    reference = GenesisUNet(1, 1, 32, "batch")
    checkpoint = _genesis_reference_state(reference)
    assert "module.down_tr64.ops.0.conv1.weight" in checkpoint["state_dict"]
    assert "module.up_tr256.up_conv.weight" in checkpoint["state_dict"]
    torch.save(checkpoint, tmp_path / "Genesis_Chest_CT.pt")
    model = GenesisUNet(1, 4, 32, "batch", sigmoid=False)
    report = load_pretrained(model, resolve_pretrained(str(tmp_path / "Genesis_Chest_CT.pt")))
    assert report["format"] == "genesis" and report["new"] == ["out.conv.weight", "out.conv.bias"]
    assert report["skipped"] == ["out_tr.final_conv.bias", "out_tr.final_conv.weight"]
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        for a, b in zip(model.encode(x), reference.encode(x)):
            torch.testing.assert_close(a, b)


class _Planted:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_pickle_that_is_not_plain_tensors_is_refused(tmp_path):
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}, "hook": _Planted()}, tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"w.pth: refused: besides tensors it holds .*print"):
        load_pretrained(ViTClassifier(2, (32, 32), 8, 1, 14, **TINY_VIT), resolve_pretrained(str(tmp_path / "w.pth")))


# ----------------------------------------------------------------------------------------------- export


def _finetuned_run(tmp_path, arch, roi, **model):
    """A run directory as fine-tuning leaves it (config, result record, best weights), without training."""
    from rayssl.finetune.models import build_model

    cfg = load_config(FinetuneConfig, "finetune", "tiny", overrides=[
        f"model.arch={arch}", f"data.roi={list(roi)}", *[f"model.{k}={v}" for k, v in model.items()]])
    classes = 14 if arch == "vit_classifier" else 3
    mode = "multilabel" if arch == "vit_classifier" else "multiclass"
    torch.manual_seed(0)
    net = build_model(cfg, 1, classes)
    run = tmp_path / arch
    run.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(run / "best.safetensors"))
    (run / "config.json").write_text(json.dumps(dump_config(cfg)))
    (run / "result.json").write_text(json.dumps({"task": {
        "arch": arch, "mode": mode, "num_classes": classes, "class_names": [f"c{i}" for i in range(classes - (mode == "multiclass"))],
        "channels": 1, "recipe": "cxr" if arch == "vit_classifier" else "ct_btcv", "spacing": None}, "config": dump_config(cfg)}))
    return run, net.eval()


def test_export_to_timm_loads_in_timm(tmp_path):
    import timm

    from rayssl.export import export

    run, net = _finetuned_run(tmp_path, "vit_classifier", (32, 32))
    path = export(run, "timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              img_size=32, patch_size=8, in_chans=1, num_classes=14, embed_dim=192, depth=4,
                              num_heads=3).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), net.encoder(x)["tokens"], atol=1e-5, rtol=1e-5)


def test_export_to_monai_loads_in_monai_unetr(tmp_path):
    from monai.networks.nets import UNETR as MonaiUNETR
    from safetensors.torch import load_file

    from rayssl.export import export

    with pytest.raises(ValueError, match="MONAI's UNETR has 12 blocks of patch 16"):
        export(_finetuned_run(tmp_path, "unetr", (32, 32, 32))[0], "monai")  # tiny: 4 blocks of patch 8
    run, net = _finetuned_run(tmp_path / "small", "unetr", (32, 32, 32), size="small", patch_size=16)
    path = export(run, "monai")
    args = json.loads((path.parent / "unetr.json").read_text())
    args["img_size"] = tuple(args["img_size"])
    monai_unetr = MonaiUNETR(**args)
    monai_unetr.load_state_dict(load_file(str(path)), strict=True)  # every tensor MONAI expects, none extra
    assert torch.equal(monai_unetr.state_dict()["out.conv.conv.weight"], net.state_dict()["head.conv.conv.weight"])


def test_export_to_torchscript_gives_the_same_logits(tmp_path):
    from rayssl.export import export

    run, net = _finetuned_run(tmp_path, "unetr", (32, 32, 32))
    scripted = torch.jit.load(str(export(run, "torchscript")))
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="monai export holds a UNETR"):
        export(_finetuned_run(tmp_path, "vit_classifier", (32, 32))[0], "monai")
