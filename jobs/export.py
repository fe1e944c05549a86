"""Write a run's weights in another library's layout: timm, MONAI, or a TorchScript module.

    python jobs/export.py RUN --format timm|monai|torchscript [--out DIR]

``timm``: a 2D MAE pre-training run's encoder (or a fine-tuned ViT classifier); ``monai``: a fine-tuned UNETR
(``unetr.safetensors`` + ``unetr.json``, the ``monai.networks.nets.UNETR`` arguments); ``torchscript``: any
fine-tuned network (``model.ts``). Runs without Ray. The last printed line is the file written.
"""

import argparse

from rayssl.cli import before_ray

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a pre-training or fine-tuning run directory")
    parser.add_argument("--format", required=True, choices=["timm", "monai", "torchscript"])
    parser.add_argument("--out", default=None, help="output folder (default: RUN/export)")
    args = parser.parse_args()
    from rayssl.export import export

    print(before_ray(export, args.run, args.format, args.out))
