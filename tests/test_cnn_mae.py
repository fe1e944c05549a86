"""cnn_mae: block masking, the masked-voxel MSE, the sparse (Spark3D) encoder, and the whole residual U-Net carried
from pre-training into fine-tuning."""

import pytest
import torch

from rayssl.models.resenc_unet import RESENC_SIZES, ResEncUNet
from rayssl.pretrain.cnn_mae import CNNMAEObjective, block_mask, masked_mse

CPU = torch.device("cpu")


def test_block_mask_masks_the_ratio_of_whole_blocks_per_sample():
    g = torch.Generator().manual_seed(0)
    mask = block_mask(3, (32, 32, 64), 16, 0.75, g, CPU)  # 2 x 2 x 4 = 16 cells, 12 masked in each sample
    assert mask.shape == (3, 1, 32, 32, 64) and set(mask.unique().tolist()) == {0.0, 1.0}
    cells = mask[:, 0, ::16, ::16, ::16]
    assert cells.flatten(1).sum(1).tolist() == [12.0, 12.0, 12.0]
    blocks = mask[:, 0].reshape(3, 2, 16, 2, 16, 4, 16)
    assert (blocks.amax(dim=(2, 4, 6)) == blocks.amin(dim=(2, 4, 6))).all()  # each 16^3 block wholly in or out
    assert not torch.equal(cells[0], cells[1])  # each sample draws its own
    with pytest.raises(ValueError, match=r"data.roi \[32, 32, 40\] must divide by model.mask_block=16"):
        block_mask(1, (32, 32, 40), 16, 0.75, g, CPU)
    with pytest.raises(ValueError, match="masks 0 of 8 cells"):
        block_mask(1, (32, 32, 32), 16, 0.05, g, CPU)


def test_the_loss_is_the_mean_squared_error_over_masked_voxels_only():
    target = torch.zeros(2, 2, 4, 4, 4)
    mask = torch.zeros(2, 1, 4, 4, 4)
    mask[0, :, :2] = 1  # 32 masked voxels x 2 channels
    recon = torch.full_like(target, 2.0)  # error 2 everywhere: 4 per masked voxel
    assert masked_mse(recon, target, mask).item() == pytest.approx(4.0)
    recon[0, :, :2] = 1.0  # error 1 on the masked voxels only
    recon[1] = 100.0  # the visible voxels do not count
    assert masked_mse(recon, target, mask).item() == pytest.approx(1.0)


def test_the_network_sees_zeros_where_it_is_masked_and_is_scored_there():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, mask):
            seen["x"], seen["mask"] = x, mask
            return x + 1.0  # off by one on every voxel

    x = torch.rand(2, 1, 32, 32, 32) + 0.5
    loss = CNNMAEObjective(0.75, 16).loss(Spy(), x, torch.Generator().manual_seed(1), torch.float32)
    mask = seen["mask"]
    assert mask.mean().item() == pytest.approx(0.75)
    assert (seen["x"][mask.bool()] == 0).all() and torch.equal(seen["x"][~mask.bool()], x[~mask.bool()])
    assert loss.item() == pytest.approx(masked_mse(x * (1 - mask) + 1.0, x, mask).item())  # (0 + 1 - x)^2 masked


@pytest.mark.parametrize("sparse", [True, False])
def test_the_sparse_encoder_passes_only_mask_tokens_where_it_is_masked(sparse):
    torch.manual_seed(0)
    net = ResEncUNet(1, 1, **RESENC_SIZES["tiny"], sparse=sparse).eval()
    skips = []
    for up in net.decoder:
        up.register_forward_hook(lambda m, args, out: skips.append(args[1]))
    if sparse:
        with torch.no_grad():
            for s, token in enumerate(net.mask_tokens):
                token.fill_(10.0 + s)
    mask = block_mask(1, (32, 32, 32), 16, 0.5, torch.Generator().manual_seed(0), CPU)
    x = torch.rand(1, 1, 32, 32, 32) * (1 - mask)
    with torch.no_grad():
        net(x, mask)
    for skip in skips:  # finest stage last; masked cells are whole 16^3 blocks, so exact at every stage here
        masked = torch.nn.functional.interpolate(mask, size=skip.shape[2:], mode="nearest")[0, 0].bool()
        stage = net.features.index(skip.shape[1])
        values = skip[0][:, masked]
        if sparse:
            assert torch.all(values == 10.0 + stage)
        else:
            assert not torch.all(values == values.flatten()[0])


def test_a_cnn_mae_export_loads_whole_into_the_fine_tuned_unet_but_its_output_layer(tmp_path):
    from rayssl.config import PretrainConfig, build_config
    from rayssl.finetune.weights import load_pretrained, resolve_pretrained
    from rayssl.pretrain.methods import build_model, export_meta, export_state
    from rayssl.models.weights_file import save_export

    cfg = build_config(PretrainConfig, {"model": {"method": "cnn_mae", "size": "tiny", "sparse": True},
                                        "data": {"roi": [32, 32, 32]}})
    pre = build_model(cfg, 1)
    path, _ = save_export(export_state("cnn_mae", pre.state_dict()), export_meta(cfg, 1), tmp_path / "unet")
    seg = ResEncUNet(1, 4, **RESENC_SIZES["tiny"])
    report = load_pretrained(seg, resolve_pretrained(str(path)))
    assert report["new"] == ["head.conv.conv.weight", "head.conv.conv.bias"]
    assert all(k.startswith(("encoder.", "decoder.")) for k in report["loaded"])
    assert len(report["loaded"]) == len(seg.state_dict()) - 2
    for k in report["loaded"]:
        assert torch.equal(seg.state_dict()[k], pre.state_dict()[k])
    with pytest.raises(ValueError, match=r"features: checkpoint \[8, 16, 32, 64\], model \[16, 32, 64, 128, 256\]"):
        load_pretrained(ResEncUNet(1, 4, **RESENC_SIZES["small"]), resolve_pretrained(str(path)))


def test_cnn_mae_pretrains_on_ray_and_its_unet_fine_tunes_predicts_and_exports(ray_session, tmp_path):
    """Pre-training (sparse, Ray Train + DeepSpeed) -> the whole U-Net fine-tuned (only the output layer new, in
    pretrained_load.json) -> prediction on a new case on its grid -> TorchScript export."""
    import json
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from rayssl.config import FinetuneConfig, PredictConfig, PretrainConfig, load_config
    from rayssl.export import export
    from rayssl.finetune.driver import finetune
    from rayssl.predict.driver import predict
    from rayssl.pretrain.driver import pretrain
    from rayssl.models.weights_file import load_export

    common = ["data.source=synthetic:ct:8", f"data.synthetic_dir={tmp_path / 'syn'}", "data.roi=[32,32,32]",
              "data.folds=4", "data.val_fold=0", "data.test_fold=1", f"run.storage_path={tmp_path}",
              "scale.cpus_per_worker=0.5"]
    pre = Path(pretrain(load_config(PretrainConfig, "pretrain", "tiny_cnn_mae", overrides=[
        *common, "model.sparse=true", "max_steps=4", "run.name=pre", "run.log_every=1"])))
    result = json.loads((pre / "result.json").read_text())
    assert result["steps"] == 4 and result["weights"].endswith("unet.safetensors")
    weights, meta = load_export(result["weights"])
    assert meta["architecture"] == "resenc_unet" and meta["sparse"] and not any(k.startswith("mask_tokens") for k in weights)
    assert (pre / "previews" / "final.png").is_file()

    run = Path(finetune(load_config(FinetuneConfig, "finetune", "tiny", overrides=[
        *common, f"pretrained={pre}", "model.arch=resenc_unet", "model.size=tiny", "max_steps=2", "epochs=1",
        "run.name=ft", "eval.hd95=false"])))
    loaded = json.loads((run / "pretrained_load.json").read_text())
    assert loaded["new"] == ["head.conv.conv.weight", "head.conv.conv.bias"] and len(loaded["loaded"]) == len(weights) - 2

    source = json.loads((run / "plan_cases.json").read_text())["test"][0]["image"][0]
    case = tmp_path / "new" / "case.nii.gz"
    case.parent.mkdir()
    case.write_bytes(Path(source).read_bytes())
    cfg = load_config(PredictConfig, "predict")
    cfg.model, cfg.input, cfg.out = [str(run)], f"folder:{case.parent}", str(tmp_path / "pred")
    out = Path(predict(cfg))
    pred = nib.load(str(out / "case.nii.gz"))
    assert pred.shape == nib.load(case).shape and np.isin(np.asarray(pred.dataobj), np.arange(8)).all()
    scripted = export(str(run), "torchscript", str(tmp_path / "ts"))
    assert Path(scripted).exists()
