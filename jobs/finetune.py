"""Fine-tune UNETR / Genesis U-Net / ViT classifier from pre-trained weights (or from scratch) and evaluate.

    python jobs/finetune.py [--preset NAME] [--config FILE] [pretrained=PATH|none] [key=value ...]

With no arguments: the ``tiny`` preset (UNETR from the newest tiny MAE pre-training run on the synthetic
CT phantoms). The last printed line is the run directory (``result.json``, per-case CSV, NIfTI, PNG).
"""

import sys

from rayssl.cli import init_ray, parse_job_args
from rayssl.config import FinetuneConfig

if __name__ == "__main__":
    cfg, _ = parse_job_args("finetune", FinetuneConfig, __doc__.splitlines()[0], default_preset="tiny")
    from rayssl.finetune.weights import resolve_pretrained

    try:
        resolve_pretrained(cfg.pretrained)  # a missing checkpoint fails before Ray starts
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    init_ray()
    from rayssl.finetune.driver import finetune

    print(finetune(cfg))
