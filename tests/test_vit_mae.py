"""ViT encoder, MAE (2D / 3D), sin-cos position embeddings and the Models Genesis U-Net."""

import warnings

import numpy as np
import pytest
import torch

from rayssl.models import VIT_SIZES, GenesisUNet, MaskedAutoencoder, ViTEncoder, interpolate_pos_embed
from rayssl.models.pos_embed import sincos_pos_embed
from rayssl.train.optim import NO_DECAY_TOKENS, param_groups

from conftest import TINY_VIT

TINY3D = dict(spatial_dims=3, img_size=(32, 32, 32), patch_size=8, **TINY_VIT)


def tiny_mae(in_channels=1, **kw):
    args = dict(TINY3D, in_channels=in_channels, decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=2)
    args.update(kw)
    return MaskedAutoencoder(**args)


# ----------------------------------------------------------------------------- sin-cos


def test_sincos_3d_shape_and_values():
    dim, grid = 12, (3, 4, 5)
    emb = sincos_pos_embed(dim, grid)
    assert emb.shape == (1 + 60, dim) and emb.dtype == np.float32
    assert np.all(emb[0] == 0)  # cls row
    f = dim // 6
    omega = 1.0 / 1e4 ** (np.arange(f) / f)
    # token 0 = position (0, 0, 0): all sin 0, all cos 1
    np.testing.assert_allclose(emb[1].reshape(6, f)[0::2], 0, atol=1e-7)
    np.testing.assert_allclose(emb[1].reshape(6, f)[1::2], 1, atol=1e-7)
    # position 1 along axis 0 (token index 4 * 5 = 20): axis-0 terms sit in slots 2 (sin), 3 (cos)
    tok = emb[1 + 20].reshape(6, f)
    np.testing.assert_allclose(tok[2], np.sin(omega), rtol=1e-6)
    np.testing.assert_allclose(tok[3], np.cos(omega), rtol=1e-6)
    np.testing.assert_allclose(tok[[0, 4]], 0, atol=1e-7)  # axes 1 and 2 still at 0
    # position (2, 3, 4): axis 1 in slots 0/1, axis 2 in slots 4/5
    tok = emb[1 + 2 * 20 + 3 * 5 + 4].reshape(6, f)
    np.testing.assert_allclose(tok[0], np.sin(3 * omega), rtol=1e-5)
    np.testing.assert_allclose(tok[2], np.sin(2 * omega), rtol=1e-5)
    np.testing.assert_allclose(tok[5], np.cos(4 * omega), rtol=1e-5)


def test_sincos_matches_monai_and_mae_2d_layout():
    from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

    for dims, grid, dim in [(3, (2, 3, 4), 24), (2, (3, 5), 16)]:
        with warnings.catch_warnings():  # MONAI calls torch.meshgrid without indexing=
            warnings.simplefilter("ignore")
            ref = build_sincos_position_embedding(list(grid), dim, spatial_dims=dims).detach().numpy()[0]
        np.testing.assert_allclose(sincos_pos_embed(dim, grid, cls_token=False), ref, atol=1e-5)
    # facebookresearch/mae 2D: first half encodes the column (axis 1), second half the row
    emb = sincos_pos_embed(8, (2, 2), cls_token=False)  # tokens (0,0), (0,1), (1,0), (1,1)
    np.testing.assert_allclose(emb[1, :4], [np.sin(1), np.sin(1e-2), np.cos(1), np.cos(1e-2)], rtol=1e-6)
    np.testing.assert_allclose(emb[1, 4:], [0, 0, 1, 1], atol=1e-7)


def test_sincos_rejects_bad_dims():
    with pytest.raises(ValueError, match="divisible by 6"):
        sincos_pos_embed(100, (2, 2, 2))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed(6, (2, 2))
    with pytest.raises(ValueError, match="grid_size"):
        sincos_pos_embed(12, (2,))


# ----------------------------------------------------------------------------- ViT encoder


def test_vit_validates_arguments():
    with pytest.raises(ValueError, match="divisible by 6"):
        ViTEncoder(3, (32, 32, 32), 8, embed_dim=64, num_heads=4)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        ViTEncoder(3, (32, 32, 30), 8, embed_dim=48, num_heads=3)
    with pytest.raises(ValueError, match="spatial_dims=3 entries"):
        ViTEncoder(3, (32, 32), 8, embed_dim=48, num_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        ViTEncoder(3, (32, 32, 32), 8, embed_dim=48, num_heads=5)
    enc = ViTEncoder(**TINY3D)
    with pytest.raises(ValueError, match=r"input must be \[N, 1, 32, 32, 32\]"):
        enc(torch.rand(1, 1, 32, 32, 16))
    with pytest.raises(ValueError, match="return_hidden"):
        enc(torch.rand(1, 1, 32, 32, 32), return_hidden=(3,))
    for size in VIT_SIZES.values():  # every preset works for 3D and 2D sin-cos and its heads
        assert size["embed_dim"] % 6 == 0 and size["embed_dim"] % size["num_heads"] == 0


def test_random_masking_counts_order_and_per_sample():
    enc = ViTEncoder(**TINY3D)
    n, length, dim = 4, 64, 5
    x = torch.arange(n * length * dim, dtype=torch.float32).view(n, length, dim)
    kept, mask, ids_restore = enc.random_masking(x, 0.75)
    keep = int(length * 0.25)
    assert kept.shape == (n, keep, dim)
    assert torch.all(mask.sum(1) == length - keep)
    assert len({tuple(m.tolist()) for m in mask}) == n  # different masks per sample
    # unshuffling [kept, zeros] with ids_restore puts kept tokens back in place, zeros where masked
    full = torch.cat([kept, torch.zeros(n, length - keep, dim)], dim=1)
    restored = torch.gather(full, 1, ids_restore[..., None].expand(-1, -1, dim))
    torch.testing.assert_close(restored, x * (1 - mask)[..., None])
    # explicit noise: the lowest-noise tokens are kept, in noise order
    noise = torch.rand(n, length)
    kept, mask, _ = enc.random_masking(x, 0.5, noise=noise)
    expected = torch.gather(x, 1, noise.argsort(1)[:, :32, None].expand(-1, -1, dim))
    torch.testing.assert_close(kept, expected)
    with pytest.raises(ValueError, match="mask_ratio"):
        enc.random_masking(x, 1.0)


def test_encoder_sees_only_visible_tokens():
    enc = ViTEncoder(**TINY3D).eval()
    seen = []
    enc.blocks[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    x = torch.rand(2, 1, 32, 32, 32)
    torch.manual_seed(0)
    out = enc(x, mask_ratio=0.75)
    assert seen[-1] == (2, 1 + int(64 * 0.25), 48)
    assert out["tokens"].shape == (2, 17, 48) and out["mask"].shape == (2, 64)
    # change every masked patch: same seed -> same mask -> identical encoder output
    mae = tiny_mae()
    patches = mae.patchify(x)
    m = out["mask"].bool()
    changed = patches.clone()
    changed[m] = torch.rand_like(changed[m])
    torch.manual_seed(0)
    out2 = enc(mae.unpatchify(changed), mask_ratio=0.75)
    torch.testing.assert_close(out2["tokens"], out["tokens"])
    # change one visible patch: the output changes
    visible = changed.clone()
    visible[~m] += 1.0
    torch.manual_seed(0)
    out3 = enc(mae.unpatchify(visible), mask_ratio=0.75)
    assert not torch.allclose(out3["tokens"], out["tokens"])
    # no masking: all tokens, no mask
    out4 = enc(x)
    assert out4["tokens"].shape == (2, 65, 48) and out4["mask"] is None and out4["ids_restore"] is None


@pytest.mark.parametrize("dims, channels", [(3, 2), (2, 3)])
def test_patch_embedding_is_the_strided_conv(dims, channels):
    enc = ViTEncoder(dims, (16,) * dims, 4, channels, embed_dim=24, depth=1, num_heads=2)
    x = torch.randn(2, channels, *(16,) * dims)
    conv = torch.nn.functional.conv3d if dims == 3 else torch.nn.functional.conv2d
    reference = conv(x, enc.patch_embed.weight, enc.patch_embed.bias, stride=4).flatten(2).transpose(1, 2)
    torch.testing.assert_close(enc.patch_embed(enc.patch_pixels(x)), reference)


def test_masked_encoder_embeds_visible_patches_like_the_full_grid():
    enc = ViTEncoder(3, (16, 16, 16), 4, 1, embed_dim=24, depth=2, num_heads=2).eval()
    x = torch.randn(3, 1, 16, 16, 16)
    torch.manual_seed(5)
    out = enc(x, mask_ratio=0.75)
    torch.manual_seed(5)  # the same masking noise, applied to the embedded full grid
    kept, mask, ids_restore = enc.random_masking(enc.patch_embed(enc.patch_pixels(x)) + enc.pos_embed[:, 1:], 0.75)
    t = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(3, -1, -1), kept], dim=1)
    for blk in enc.blocks:
        t = blk(t)
    torch.testing.assert_close(out["tokens"], enc.norm(t))
    assert torch.equal(out["mask"], mask) and torch.equal(out["ids_restore"], ids_restore)


def test_return_hidden_and_drop_path():
    enc = ViTEncoder(**dict(TINY3D, depth=4), drop_path_rate=0.5)
    assert enc.blocks[0].drop_path1.__class__.__name__ == "Identity"
    assert enc.blocks[-1].drop_path1.drop_prob == pytest.approx(0.5)
    assert enc.blocks[1].drop_path1.drop_prob == pytest.approx(0.5 / 3)
    x = torch.rand(2, 1, 32, 32, 32)
    enc.eval()
    a, b = enc(x, return_hidden=(1, 2, 4)), enc(x, return_hidden=(1, 2, 4))
    torch.testing.assert_close(a["tokens"], b["tokens"])  # deterministic in eval
    assert [h.shape for h in a["hidden"]] == [(2, 65, 48)] * 3
    torch.testing.assert_close(enc.norm(a["hidden"][-1]), a["tokens"])
    enc.train()
    torch.manual_seed(1)
    c = enc(x)["tokens"]
    d = enc(x)["tokens"]
    assert not torch.allclose(c, d)  # stochastic depth active in train mode


def test_pos_embed_fixed_or_learnable():
    fixed = ViTEncoder(**TINY3D)
    learn = ViTEncoder(**TINY3D, learnable_pos_embed=True)
    assert not fixed.pos_embed.requires_grad and learn.pos_embed.requires_grad
    ref = torch.from_numpy(sincos_pos_embed(48, (4, 4, 4)))[None]
    torch.testing.assert_close(learn.pos_embed.data, ref)
    assert fixed.grid_size == (4, 4, 4) and fixed.num_patches == 64


def test_layer_decay_param_groups():
    enc = ViTEncoder(**dict(TINY3D, depth=3), learnable_pos_embed=True)
    assert enc.layer_id("patch_embed.weight") == 0 and enc.layer_id("cls_token") == 0
    assert enc.layer_id("blocks.0.attn.qkv.weight") == 1 and enc.layer_id("blocks.2.mlp.fc1.bias") == 3
    assert enc.layer_id("norm.weight") == 4
    groups = param_groups(enc, 0.05, layer_decay=0.5, no_decay=NO_DECAY_TOKENS)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["patch_embed.weight"]["lr_scale"] == pytest.approx(0.5 ** 4)
    assert by_name["blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.5 ** 3)
    assert by_name["norm.weight"]["lr_scale"] == 1.0
    assert by_name["blocks.1.attn.qkv.weight"]["weight_decay"] == 0.05
    for name in ("blocks.1.attn.qkv.bias", "norm.weight", "cls_token", "pos_embed"):
        assert by_name[name]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(enc.parameters()))


def test_interpolate_pos_embed():
    pos = torch.from_numpy(sincos_pos_embed(48, (4, 4, 4)))[None]
    torch.testing.assert_close(interpolate_pos_embed(pos, (4, 4, 4), (4, 4, 4)), pos)
    out = interpolate_pos_embed(pos, (4, 4, 4), (6, 6, 2))
    assert out.shape == (1, 1 + 72, 48)
    torch.testing.assert_close(out[:, 0], pos[:, 0])
    const = torch.cat([torch.zeros(1, 1, 6), torch.full((1, 16, 6), 0.3)], dim=1)
    torch.testing.assert_close(interpolate_pos_embed(const, (4, 4), (7, 3))[:, 1:], torch.full((1, 21, 6), 0.3))
    with pytest.raises(ValueError, match="pos_embed must be"):
        interpolate_pos_embed(pos, (4, 4, 5), (4, 4, 4))


# ----------------------------------------------------------------------------- MAE


@pytest.mark.parametrize("dims,channels", [(3, 1), (3, 4), (2, 1), (2, 4)])
def test_patchify_roundtrip(dims, channels):
    img = (32,) * dims
    mae = tiny_mae(channels, spatial_dims=dims, img_size=img, embed_dim=48, decoder_embed_dim=24)
    x = torch.rand(2, channels, *img)
    p = mae.patchify(x)
    assert p.shape == (2, 4 ** dims, 8 ** dims * channels)
    torch.testing.assert_close(mae.unpatchify(p), x, rtol=0, atol=0)


def test_patchify_pixel_order_channels_last():
    mae = tiny_mae(2, spatial_dims=2, img_size=(16, 16), embed_dim=48, decoder_embed_dim=24)
    x = torch.rand(1, 2, 16, 16)
    p = mae.patchify(x)  # 2 x 2 patches of 8 x 8 x C
    # patch (0, 1), pixel (a, b), channel c -> index (a * 8 + b) * 2 + c
    for a, b, c in [(0, 0, 0), (3, 5, 1), (7, 7, 1)]:
        assert p[0, 1, (a * 8 + b) * 2 + c] == x[0, c, a, 8 + b]
    with pytest.raises(ValueError, match="imgs must be"):
        mae.patchify(torch.rand(1, 1, 16, 16))


def test_loss_counts_masked_patches_only():
    mae = tiny_mae()
    imgs = torch.rand(2, 1, 32, 32, 32)
    pred = torch.rand(2, 64, 512)
    mask = torch.zeros(2, 64)
    mask[0, :10] = 1
    mask[1, 5:40] = 1
    loss = mae.forward_loss(imgs, pred, mask)
    target = mae.patchify(imgs)
    per_patch = [((pred[n, i] - target[n, i]) ** 2).mean() for n in range(2) for i in range(64) if mask[n, i]]
    assert loss.item() == pytest.approx(torch.stack(per_patch).mean().item(), rel=1e-5)
    visible = pred.clone()
    visible[0, 20] += 5.0  # visible patch
    assert mae.forward_loss(imgs, visible, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    masked = pred.clone()
    masked[1, 6] += 5.0  # masked patch
    assert mae.forward_loss(imgs, masked, mask).item() > loss.item() + 0.01


def test_norm_pix_target():
    mae = tiny_mae(norm_pix_loss=True)
    imgs = torch.rand(1, 1, 32, 32, 32) * 3 + 2
    t = mae.patchify(imgs)
    normed = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
    mask = torch.ones(1, 64)
    assert mae.forward_loss(imgs, normed, mask).item() == pytest.approx(0.0, abs=1e-8)
    assert mae.forward_loss(imgs, t, mask).item() > 1.0  # raw pixels are not the target
    mae.norm_pix_loss = False
    assert mae.forward_loss(imgs, t, mask).item() == 0.0


def test_mae_forward_shapes_multichannel_and_2d():
    mae = tiny_mae(4)
    loss, pred, mask = mae(torch.rand(2, 4, 32, 32, 32), mask_ratio=0.75)
    assert pred.shape == (2, 64, 512 * 4) and mask.shape == (2, 64) and loss.ndim == 0
    assert torch.all(mask.sum(1) == 48)
    with pytest.raises(ValueError, match="mask_ratio"):
        mae(torch.rand(1, 4, 32, 32, 32), mask_ratio=0.0)
    vitb = MaskedAutoencoder(spatial_dims=2, img_size=(224, 224), in_channels=1, **VIT_SIZES["base"],
                             decoder_embed_dim=256, decoder_depth=1, decoder_num_heads=8)
    with torch.no_grad():
        loss, pred, mask = vitb(torch.rand(1, 1, 224, 224), mask_ratio=0.75)
    assert pred.shape == (1, 196, 256) and mask.sum() == 196 - 49 and torch.isfinite(loss)


def test_mae_learns_fixed_batch():
    torch.manual_seed(0)
    mae = tiny_mae(img_size=(16, 16, 16), patch_size=4)
    x = torch.rand(2, 1, 4, 4, 4).repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3)

    def loss_at(seed):
        torch.manual_seed(seed)
        return mae(x, mask_ratio=0.75)[0]

    with torch.no_grad():
        before = loss_at(123).item()
    for step in range(12):
        loss = loss_at(step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_at(123).item()
    assert after < 0.5 * before


# ----------------------------------------------------------------------------- Genesis U-Net


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_genesis_unet_shapes(norm):
    net = GenesisUNet(in_channels=2, out_channels=3, base_channels=8, norm=norm)
    x = torch.rand(2, 2, 16, 16, 8)
    y = net(x)
    assert y.shape == (2, 3, 16, 16, 8) and y.min() >= 0 and y.max() <= 1
    feats = net.encode(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 16, 16, 8), (32, 8, 8, 4), (64, 4, 4, 2), (128, 2, 2, 1)]
    assert net.feature_channels == [16, 32, 64, 128]
    raw = GenesisUNet(base_channels=8, sigmoid=False, norm=norm).eval()(torch.rand(1, 1, 16, 8, 8) * 50)
    assert raw.min() < 0 or raw.max() > 1  # no sigmoid: unbounded


def test_genesis_unet_paper_size_and_errors():
    net = GenesisUNet()  # paper configuration: 32/64 -> ... -> 256/512
    assert net.feature_channels == [64, 128, 256, 512]
    assert 18e6 < sum(p.numel() for p in net.parameters()) < 20e6
    small = GenesisUNet(base_channels=8, norm="instance")
    with pytest.raises(ValueError, match="divisible by 8"):
        small(torch.rand(1, 1, 16, 16, 12))
    with pytest.raises(ValueError, match="bottleneck voxel"):
        small(torch.rand(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="norm="):
        GenesisUNet(norm="layer")
    assert GenesisUNet(base_channels=4, spatial_dims=2, norm="group")(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)
