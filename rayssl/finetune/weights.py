"""Loading pre-trained weights into a downstream network: strict about the architecture, explicit about what loaded.

``pretrained`` is ``none``, an exported ``encoder.safetensors`` / ``unet.safetensors`` (with its JSON
sidecar), a pre-training run directory, or published weights in their own layout (a ``.pt`` / ``.pth`` /
``.bin`` read with ``torch.load(weights_only=True)``, or ``.safetensors``): timm / facebookresearch/mae
ViTs, MONAI ``ViT`` and ``UNETR``, SelfMedMAE's 3D MAE, the Models Genesis ``UNet3D``
(:mod:`rayssl.models.convert`). A ViT encoder must match in spatial dims, patch size, width, depth, heads
and channels; a different ROI is fine (position embeddings are interpolated). The Genesis U-Net must match
in width, norm and channels; only its output convolution is new.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rayssl.models.genesis_unet import GenesisUNet
from rayssl.models.resenc_unet import ResEncUNet
from rayssl.models.vit import ViTEncoder, check_grid, interpolate_pos_embed
from rayssl.models.weights_file import load_export
from rayssl.train.layout import RunDir

EXPORT_NAMES = tuple(f"{stem}.safetensors" for stem in RunDir.EXPORT_STEMS)  # encoder first, then unet
NATIVE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def resolve_pretrained(spec: str | None) -> Path | None:
    """``none`` -> ``None``; a run directory -> its ``export/*.safetensors``; a file -> itself.

    A glob (``runs/tiny-mae-*``) picks the newest matching run directory that has exported weights.

    Raises:
        ValueError: the path does not exist or the directory holds no exported weights.
    """
    if spec is None or str(spec).strip().lower() in ("", "none"):
        return None
    path = Path(str(spec)).expanduser()
    if any(ch in str(path) for ch in "*?["):  # newest matching run directory with exported weights
        runs = [p for p in path.parent.glob(path.name) if any((p / RunDir.EXPORT / n).is_file() for n in EXPORT_NAMES)]
        if not runs:
            raise ValueError(f"pretrained={spec!r}: no pre-training run with exported weights matches "
                             "(run python jobs/pretrain.py first, or pass pretrained=none)")
        path = max(runs, key=lambda p: p.stat().st_mtime)
    if path.is_dir():
        for folder in (path / RunDir.EXPORT, path):
            for name in EXPORT_NAMES:
                if (folder / name).is_file():
                    return (folder / name).resolve()
        raise ValueError(f"pretrained={spec!r}: directory holds no export/encoder.safetensors or export/unet.safetensors")
    if path.suffix.lower() in NATIVE_SUFFIXES and path.is_file():
        return path.resolve()  # published weights: read with torch.load(weights_only=True)
    st = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
    if not st.is_file():
        raise ValueError(f"pretrained={spec!r} does not exist (expected 'none', a pre-training run directory, "
                         "its exported .safetensors, or published weights: .pt / .pth / .bin / .safetensors)")
    return st.resolve()


def _mismatch(source: Path, pairs: dict[str, tuple]) -> None:
    diff = [f"{k}: checkpoint {a!r}, model {b!r}" for k, (a, b) in pairs.items() if a is not None and a != b]
    if diff:
        raise ValueError(f"pretrained weights {source} do not fit the model:\n  " + "\n  ".join(diff))


def _check_shapes(source: Path, state: dict, own: dict, prefix: str) -> None:
    """Raise ``ValueError`` listing the keys ``state`` misses or adds and the shapes that differ from ``own``."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{prefix}{k}: checkpoint {list(state[k].shape)}, model {list(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = ([f"missing in checkpoint: {', '.join(prefix + k for k in missing)}"] if missing else []) + \
                ([f"not in model: {', '.join(unexpected)}"] if unexpected else []) + shapes
        raise ValueError(f"pretrained weights {source} do not fit the model:\n  " + "\n  ".join(lines))


def _load_vit(encoder: ViTEncoder, weights: dict, meta: dict, source: Path) -> dict:
    if meta.get("architecture") != "vit":
        raise ValueError(f"pretrained weights {source} hold a {meta.get('architecture')!r} network "
                         f"(method {meta.get('method')!r}); this model needs a ViT encoder (MAE pre-training)")
    _mismatch(source, {
        "spatial_dims": (meta.get("spatial_dims"), encoder.spatial_dims),
        "patch_size": (meta.get("patch_size"), encoder.patch_size),
        "embed_dim (width)": (meta.get("embed_dim"), encoder.embed_dim),
        "depth": (meta.get("depth"), encoder.depth),
        "num_heads": (meta.get("num_heads"), encoder.blocks[0].attn.num_heads),
        "in_channels": (meta.get("in_channels"), encoder.in_channels),
    })
    state = dict(weights)
    interpolated = None
    pos = state.get("pos_embed")
    if pos is not None and meta.get("roi") is not None:
        old_grid = check_grid(encoder.spatial_dims, meta["roi"], encoder.patch_size)
        if old_grid != encoder.grid_size:
            state["pos_embed"] = interpolate_pos_embed(pos, old_grid, encoder.grid_size)
            interpolated = [list(old_grid), list(encoder.grid_size)]
    _check_shapes(source, state, encoder.state_dict(), "encoder.")
    with torch.no_grad():
        encoder.load_state_dict(state, strict=True)
    return {"pos_embed_interpolated": interpolated, "loaded": sorted(f"encoder.{k}" for k in state)}


def _load_all_but(net: nn.Module, head: str, weights: dict, source: Path) -> dict:
    """Every tensor of ``weights`` into ``net`` but those under ``head`` (the new output layer), shapes checked."""
    state = {k: v for k, v in weights.items() if not k.startswith(head)}
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(head)}
    _check_shapes(source, state, own, "")
    with torch.no_grad():
        net.load_state_dict(state, strict=False)
    return {"pos_embed_interpolated": None, "loaded": sorted(state)}


def _load_unet(unet: GenesisUNet, weights: dict, meta: dict, source: Path) -> dict:
    if meta.get("architecture") != "genesis_unet":
        raise ValueError(f"pretrained weights {source} hold a {meta.get('architecture')!r} network "
                         f"(method {meta.get('method')!r}); model.arch=genesis_unet needs Models Genesis weights")
    first = unet.down[0][0].conv
    _mismatch(source, {
        "base_channels": (meta.get("base_channels"), unet.feature_channels[0] // 2),
        "norm": (meta.get("norm"), unet.norm),
        "in_channels": (meta.get("in_channels"), first.in_channels),
    })
    return _load_all_but(unet, "out.", weights, source)  # a new output head


def _load_resenc(unet: ResEncUNet, weights: dict, meta: dict, source: Path) -> dict:
    """A cnn_mae pre-training's whole residual U-Net: encoder and decoder load, only the output layer is new."""
    if meta.get("architecture") != "resenc_unet":
        raise ValueError(f"pretrained weights {source} hold a {meta.get('architecture')!r} network "
                         f"(method {meta.get('method')!r}); model.arch=resenc_unet needs cnn_mae weights")
    _mismatch(source, {
        "features": (meta.get("features"), list(unet.features)),
        "blocks": (meta.get("blocks"), list(unet.blocks)),
        "in_channels": (meta.get("in_channels"), unet.encoder[0][0].conv1.conv.in_channels),
        "spatial_dims": (meta.get("spatial_dims"), unet.spatial_dims),
    })
    return _load_all_but(unet, "head.", weights, source)  # a new output layer


def _interpolate(encoder: ViTEncoder, state: dict, source: Path) -> list | None:
    """Resize ``state["pos_embed"]`` to the encoder's grid when the source's cubic/square grid differs."""
    pos = state.get("pos_embed")
    if pos is None or pos.shape == encoder.pos_embed.shape:
        return None
    side = round((pos.shape[1] - 1) ** (1 / encoder.spatial_dims))
    if side ** encoder.spatial_dims != pos.shape[1] - 1:
        raise ValueError(f"pretrained weights {source}: a position embedding of {pos.shape[1] - 1} tokens is no cube "
                         f"or square grid, so it cannot be resized to {list(encoder.grid_size)}")
    old = (side,) * encoder.spatial_dims
    state["pos_embed"] = interpolate_pos_embed(pos, old, encoder.grid_size)
    return [list(old), list(encoder.grid_size)]


def _load_native(model: nn.Module, path: Path) -> dict:
    """Published weights (:mod:`rayssl.models.convert`) into ``model``: the ViT encoder (and a MONAI UNETR's
    decoder into a UNETR), or the Genesis U-Net's body; what was used, loaded and left out is reported."""
    from rayssl.models import convert
    from rayssl.models.weights_file import FormatError, read_state_dict

    try:
        state = read_state_dict(path)
        fmt = convert.detect(state)
    except FormatError as e:
        raise ValueError(str(e)) from None
    if isinstance(model, ResEncUNet):
        raise ValueError(f"pretrained weights {path} have no rayssl sidecar (.json); model.arch=resenc_unet loads "
                         "a cnn_mae pre-training's export/unet.safetensors")
    if isinstance(model, GenesisUNet):
        if fmt not in ("genesis", "rayssl"):
            raise ValueError(f"pretrained weights {path} are a {fmt} checkpoint; model.arch=genesis_unet needs the "
                             "Models Genesis U-Net (UNet3D)")
        body, used = convert.genesis_unet(state) if fmt == "genesis" else ({k: v for k, v in state.items()}, set(state))
        body = {k: v for k, v in body.items() if not k.startswith("out.")}  # new output head
        used = {k for k in used if not k.startswith("out_tr.")}
        own = {k: v for k, v in model.state_dict().items() if not k.startswith("out.")}
        _check_shapes(path, body, own, "")
        with torch.no_grad():
            model.load_state_dict(body, strict=False)
        return {"method": "genesis", "format": fmt, "pos_embed_interpolated": None, "loaded": sorted(body),
                "skipped": sorted(set(state) - used)}
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, ViTEncoder):
        raise ValueError(f"cannot load pretrained weights into {type(model).__name__}")
    if fmt == "genesis":
        raise ValueError(f"pretrained weights {path} are a Models Genesis U-Net; this model needs a ViT encoder")
    enc, used = convert.vit_encoder(state, fmt)
    interpolated = _interpolate(encoder, enc, path)
    own = encoder.state_dict()
    if "cls_token" not in enc:  # a MONAI ViT without classification has none: the model's own stays
        own.pop("cls_token")
    _check_shapes(path, enc, own, "encoder.")
    loaded = {f"encoder.{k}": v for k, v in enc.items()}
    if fmt == "monai_unetr" and hasattr(model, "head"):
        decoder, used_decoder = convert.unetr_decoder(state)
        own = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
        if {k: tuple(v.shape) for k, v in decoder.items()} == {k: tuple(v.shape) for k, v in own.items() if k in decoder}:
            loaded.update(decoder)
            used |= used_decoder
    with torch.no_grad():
        model.load_state_dict(loaded, strict=False)
    return {"method": "mae" if fmt in ("timm", "selfmedmae") else fmt, "format": fmt,
            "pos_embed_interpolated": interpolated, "loaded": sorted(loaded), "skipped": sorted(set(state) - used)}


def load_pretrained(model: nn.Module, path: Path | None) -> dict:
    """Initialise ``model`` (UNETR, ViT classifier or Genesis U-Net) from pre-trained weights.

    Args:
        model: the downstream network; UNETR / classifier expose ``.encoder`` (a :class:`ViTEncoder`). On the
            meta device (names and shapes only) this checks the weights and reports what would load.
        path: the weights, as :func:`resolve_pretrained` resolved them (in the run's plan); ``None``: none.

    Returns:
        ``{"source", "method", "loaded": [parameter names], "new": [names trained from scratch],
        "pos_embed_interpolated": [old grid, new grid] | None}`` (``source`` ``None`` for ``none``).

    Raises:
        ValueError: unreadable weights, or the checkpoint's architecture, patch size, width, depth, heads,
            channels or any parameter shape differs from the model's (all differences are listed).
        TypeError: ``path`` is a string (resolve it with :func:`resolve_pretrained` first).
    """
    if isinstance(path, str):
        raise TypeError(f"load_pretrained takes a resolved path: resolve_pretrained({path!r}) first")
    names = [k for k in model.state_dict()]
    if path is None:
        return {"source": None, "method": None, "loaded": [], "new": names, "pos_embed_interpolated": None}
    if not path.with_suffix(".json").is_file():  # no rayssl sidecar: published weights in their own layout
        report = _load_native(model, path)
        loaded = set(report["loaded"])
        return {"source": str(path), **report, "new": [k for k in names if k not in loaded]}
    weights, meta = load_export(path)
    if isinstance(model, GenesisUNet):
        report = _load_unet(model, weights, meta, path)
    elif isinstance(model, ResEncUNet):
        report = _load_resenc(model, weights, meta, path)
    elif isinstance(getattr(model, "encoder", None), ViTEncoder):
        report = _load_vit(model.encoder, weights, meta, path)
    else:
        raise ValueError(f"cannot load pretrained weights into {type(model).__name__}")
    loaded = set(report["loaded"])
    return {"source": str(path), "method": meta.get("method"), **report,
            "new": [k for k in names if k not in loaded]}
