"""Published weight layouts to and from rayssl's module names (tensors only; no code is ever unpickled).

Read: timm / facebookresearch/mae ViTs, MONAI ``ViT`` and ``UNETR``, SelfMedMAE's 3D MAE (``MAE3D``), and
the Models Genesis reference ``UNet3D`` (``pytorch/unet3d.py``, e.g. ``Genesis_Chest_CT.pt``). Write: timm
(a 2D ViT encoder), MONAI (``UNETR`` and ``ViT``). Every converter returns the converted tensors and the
source keys it used, so a caller can report what loaded and what did not. Reading the files themselves (and
their size caps) is :mod:`rayssl.models.weights_file`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from rayssl.models.weights_file import FormatError

FORMATS = ("rayssl", "timm", "monai_vit", "monai_unetr", "selfmedmae", "genesis")
UNETR_DECODER = {"encoder1": "stem", "encoder2": "skips.0", "encoder3": "skips.1", "encoder4": "skips.2",
                 "decoder5": "ups.0", "decoder4": "ups.1", "decoder3": "ups.2", "decoder2": "ups.3", "out": "head"}
"""MONAI ``UNETR`` decoder modules -> rayssl ``UNETR`` (patch 16; ``monai/networks/nets/unetr.py``)."""
GENESIS_LEVELS = {"down_tr64": "down.0", "down_tr128": "down.1", "down_tr256": "down.2", "down_tr512": "down.3",
                  "up_tr256": "up.0", "up_tr128": "up.1", "up_tr64": "up.2"}
"""Models Genesis ``UNet3D`` levels -> rayssl ``GenesisUNet`` (``pytorch/unet3d.py``)."""


def detect(state: Mapping[str, Tensor]) -> str:
    """The layout of a state dict: one of :data:`FORMATS`.

    Raises:
        FormatError: no known layout (the first keys are named).
    """
    keys = set(state)
    if "down_tr64.ops.0.conv1.weight" in keys:
        return "genesis"
    if any(k.startswith("vit.patch_embedding.") for k in keys) and "encoder1.layer.conv1.conv.weight" in keys:
        return "monai_unetr"
    if any(k.startswith(("patch_embedding.", "vit.patch_embedding.")) for k in keys):
        return "monai_vit"
    if "encoder_pos_embed" in keys and "encoder.patch_embed.proj.weight" in keys:
        return "selfmedmae"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    if "patch_embed.weight" in keys or "encoder.patch_embed.weight" in keys or "down.0.0.conv.weight" in keys:
        return "rayssl"
    raise FormatError("weights in no layout rayssl reads (timm / facebookresearch/mae ViT, MONAI ViT or UNETR, "
                      f"SelfMedMAE MAE3D, Models Genesis UNet3D); first keys: {sorted(keys)[:6]}")


def _cls_pos(pos: Tensor, cls_row: bool) -> Tensor:
    """A position embedding with rayssl's cls row (zeros where the source has none)."""
    return pos if cls_row else torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)


def vit_encoder(state: Mapping[str, Tensor], fmt: str) -> tuple[dict[str, Tensor], set[str]]:
    """A ViT encoder's tensors in rayssl's names (``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks.*``,
    ``norm``) and the source keys used."""
    out, used = {}, set()

    def take(src: str, dst: str, value: Tensor | None = None) -> None:
        if src in state:
            out[dst] = state[src] if value is None else value
            used.add(src)

    if fmt in ("timm", "selfmedmae", "rayssl"):
        pre = "encoder." if fmt == "selfmedmae" or (fmt == "rayssl" and "encoder.patch_embed.weight" in state) else ""
        for k, v in state.items():
            if not k.startswith(pre):
                continue
            name = k[len(pre):]
            if name.startswith(("blocks.", "norm.", "cls_token")) or name in ("pos_embed", "patch_embed.weight",
                                                                               "patch_embed.bias"):
                take(k, name)
            elif name.startswith("patch_embed.proj."):
                take(k, "patch_embed." + name.split(".")[-1])
        if fmt == "selfmedmae" and "encoder_pos_embed" in state:  # fixed sin-cos without a cls row
            take("encoder_pos_embed", "pos_embed", _cls_pos(state["encoder_pos_embed"], False))
        if fmt == "timm" and "pos_embed" in state and "cls_token" not in state:  # a timm ViT without cls token
            out["pos_embed"] = _cls_pos(state["pos_embed"], False)
        return out, used
    if fmt in ("monai_vit", "monai_unetr"):
        pre = "vit." if any(k.startswith("vit.") for k in state) else ""
        take(f"{pre}patch_embedding.patch_embeddings.weight", "patch_embed.weight")
        take(f"{pre}patch_embedding.patch_embeddings.bias", "patch_embed.bias")
        if f"{pre}patch_embedding.position_embeddings" in state:
            take(f"{pre}patch_embedding.position_embeddings", "pos_embed",
                 _cls_pos(state[f"{pre}patch_embedding.position_embeddings"], False))
        take(f"{pre}cls_token", "cls_token")
        take(f"{pre}norm.weight", "norm.weight")
        take(f"{pre}norm.bias", "norm.bias")
        renames = {"mlp.linear1": "mlp.fc1", "mlp.linear2": "mlp.fc2", "attn.out_proj": "attn.proj",
                   "attn.qkv": "attn.qkv", "norm1": "norm1", "norm2": "norm2"}
        for k, v in state.items():
            m = re.fullmatch(rf"{re.escape(pre)}blocks\.(\d+)\.(.+)\.(weight|bias)", k)
            if m and m.group(2) in renames:
                take(k, f"blocks.{m.group(1)}.{renames[m.group(2)]}.{m.group(3)}")
        for k in [k for k in out if k.endswith("attn.qkv.weight")]:  # MONAI's default: no qkv bias
            out.setdefault(k[:-len("weight")] + "bias", torch.zeros(out[k].shape[0]))
        return out, used
    raise FormatError(f"a {fmt} checkpoint holds no ViT encoder")


def unetr_decoder(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], set[str]]:
    """MONAI ``UNETR`` decoder tensors in rayssl ``UNETR`` names, and the source keys used."""
    out, used = {}, set()
    for k, v in state.items():
        head = k.split(".", 1)[0]
        if head in UNETR_DECODER:
            out[f"{UNETR_DECODER[head]}.{k.split('.', 1)[1]}"] = v
            used.add(k)
    return out, used


def genesis_unet(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], set[str]]:
    """Models Genesis ``UNet3D`` tensors in rayssl ``GenesisUNet`` names (``conv1`` -> ``conv``, ``bn1`` ->
    ``adn.N``, ``up_conv`` -> ``up_conv.i``, ``out_tr.final_conv`` -> ``out.conv``), and the keys used."""
    out, used = {}, set()
    ups = {"up_tr256": "0", "up_tr128": "1", "up_tr64": "2"}
    for k, v in state.items():
        m = re.fullmatch(r"(\w+)\.ops\.(\d)\.(conv1|bn1)\.(\w+)", k)
        if m and m.group(1) in GENESIS_LEVELS:
            part = "conv" if m.group(3) == "conv1" else "adn.N"
            out[f"{GENESIS_LEVELS[m.group(1)]}.{m.group(2)}.{part}.{m.group(4)}"] = v
        elif (m := re.fullmatch(r"(up_tr\d+)\.up_conv\.(weight|bias)", k)) and m.group(1) in ups:
            out[f"up_conv.{ups[m.group(1)]}.{m.group(2)}"] = v
        elif (m := re.fullmatch(r"out_tr\.final_conv\.(weight|bias)", k)):
            out[f"out.conv.{m.group(1)}"] = v
        else:
            continue
        used.add(k)
    return out, used


# --------------------------------------------------------------------------- export


def to_timm(encoder_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A rayssl 2D ViT encoder's tensors in timm ``VisionTransformer`` names (no classification head)."""
    out = {}
    for k, v in encoder_state.items():
        out[k.replace("patch_embed.", "patch_embed.proj.") if k.startswith("patch_embed.") else k] = v.contiguous()
    return out


def to_monai_unetr(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A rayssl ``UNETR``'s tensors in ``monai.networks.nets.UNETR`` names (its ViT has no cls token: rayssl's
    ``encoder.cls_token`` and the cls row of ``pos_embed`` are dropped; MONAI's qkv has a bias only with
    ``qkv_bias=True``)."""
    back = {v: k for k, v in UNETR_DECODER.items()}
    renames = {"mlp.fc1": "mlp.linear1", "mlp.fc2": "mlp.linear2", "attn.proj": "attn.out_proj"}
    out = {}
    for k, v in state.items():
        if k.startswith("encoder."):
            name = k[len("encoder."):]
            if name == "cls_token":
                continue
            if name == "pos_embed":
                out["vit.patch_embedding.position_embeddings"] = v[:, 1:].contiguous()
            elif name.startswith("patch_embed."):
                out[f"vit.patch_embedding.patch_embeddings.{name.split('.')[-1]}"] = v
            elif (m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)):
                out[f"vit.blocks.{m.group(1)}.{renames.get(m.group(2), m.group(2))}.{m.group(3)}"] = v
            else:
                out[f"vit.{name}"] = v
            continue
        top, rest = k.split(".", 1)
        head = f"{top}.{rest.split('.', 1)[0]}" if top in ("skips", "ups") else top
        out[f"{back[head]}.{rest.split('.', 1)[1] if top in ('skips', 'ups') else rest}"] = v
    return out
