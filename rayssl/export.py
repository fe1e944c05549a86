"""Hand rayssl's weights on in other libraries' layouts: timm, MONAI, TorchScript.

* ``timm``: the ViT encoder of a 2D MAE pre-training run (or of a fine-tuned ViT classifier) as a timm
  ``VisionTransformer`` state dict (``model.safetensors``), loadable with
  ``timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=PATH), num_classes=0)``.
* ``monai``: a fine-tuned UNETR as a ``monai.networks.nets.UNETR`` state dict (``unetr.safetensors``) plus the
  constructor arguments (``unetr.json``). MONAI's ViT has no cls token, so its outputs are close to, not
  equal to, rayssl's.
* ``torchscript``: any fine-tuned network as a TorchScript module (``model.ts``) for deployment; it takes
  a preprocessed ``[N, C, *roi]`` tensor and returns logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rayssl.train.layout import RunDir

FORMATS = ("timm", "monai", "torchscript")


def _run_record(run: Path) -> tuple[str, dict, dict]:
    """``(kind, config dict, result)`` of a pre-training or fine-tuning run directory."""
    try:
        result = json.loads((run / RunDir.RESULT).read_text())
        config = json.loads((run / RunDir.CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{run}: not a finished rayssl run ({RunDir.RESULT} / {RunDir.CONFIG}: {e})") from None
    return ("finetune" if "task" in result else "pretrain"), config, result


def export(run: str | Path, fmt: str, out: str | Path | None = None) -> Path:
    """Write ``run``'s weights in ``fmt`` (one of :data:`FORMATS`) into ``out`` (default ``<run>/export``);
    return the file written.

    Raises:
        ValueError: unknown format, or a run whose network the format cannot hold (named).
    """
    from safetensors.torch import save_file

    from rayssl.models import convert
    from rayssl.models.weights_file import read_safetensors

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    run = Path(run)
    kind, config, result = _run_record(run)
    out = Path(out) if out else run / RunDir.EXPORT
    out.mkdir(parents=True, exist_ok=True)
    if kind == "pretrain":
        from rayssl.config import PretrainConfig

        cfg = PretrainConfig.model_validate(config)
        if fmt != "timm" or cfg.model.method != "mae" or cfg.data.spatial_dims != 2:
            raise ValueError(f"{run}: a {cfg.model.method} pre-training run of {cfg.data.spatial_dims}D exports as timm only "
                             "when it is a 2D MAE (timm has no 3D ViT); fine-tune it for monai / torchscript")
        encoder = read_safetensors(run / RunDir.EXPORT / f"{RunDir.export_stem(cfg.model.method)}.safetensors")
        path = out / "timm_model.safetensors"
        save_file(convert.to_timm(encoder), str(path))
        return path
    from rayssl.config import FinetuneConfig
    from rayssl.predict.models import load_model

    cfg = FinetuneConfig.model_validate(config)
    model = load_model(str(run))
    net = model.build("cpu")
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if fmt == "timm":
        if cfg.model.arch != "vit_classifier":
            raise ValueError(f"{run}: a {cfg.model.arch} exports as timm only as a 2D ViT classifier")
        path = out / "timm_model.safetensors"
        enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        save_file({**convert.to_timm(enc), **{k: v for k, v in state.items() if k.startswith("head.")}}, str(path))
        return path
    if fmt == "monai":
        if cfg.model.arch != "unetr":
            raise ValueError(f"{run}: monai export holds a UNETR; this run fine-tuned a {cfg.model.arch}")
        from monai.networks.nets import UNETR as MonaiUNETR

        from rayssl.models.vit import VIT_SIZES

        size = VIT_SIZES[cfg.model.size]
        if size["depth"] != 12 or cfg.model.patch_size != 16 or cfg.data.spatial_dims != 3:
            raise ValueError(f"{run}: MONAI's UNETR has 12 blocks of patch 16 in 3D; this UNETR has {size['depth']} "
                             f"blocks of patch {cfg.model.patch_size} (export it as torchscript instead)")
        args = {"in_channels": model.spec.channels, "out_channels": model.spec.num_classes, "img_size": list(cfg.data.roi),
                "feature_size": cfg.model.feature_size, "hidden_size": size["embed_dim"],
                "mlp_dim": 4 * size["embed_dim"], "num_heads": size["num_heads"], "norm_name": "instance",
                "res_block": True, "qkv_bias": True}
        mapped = convert.to_monai_unetr(state)
        reference = MonaiUNETR(**args).state_dict()
        for k, v in reference.items():  # blocks' unused cross-attention norms: MONAI's initial values
            mapped.setdefault(k, v)
        path = out / "unetr.safetensors"
        save_file({k: v.contiguous() for k, v in mapped.items()}, str(path))
        (out / "unetr.json").write_text(json.dumps(args, indent=1))
        return path
    roi = cfg.sw_roi
    example = torch.zeros(1, model.spec.channels, *roi)
    with torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
    path = out / "model.ts"
    traced.save(str(path))
    return path
