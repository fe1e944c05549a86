"""Fine-tune UNETR / Genesis U-Net / ViT classifier from pre-trained weights (or from scratch) and evaluate.

    python jobs/finetune.py [--preset NAME] [--config FILE] [pretrained=PATH|none] [key=value ...]

With no arguments: the ``tiny`` preset (UNETR from the newest tiny MAE pre-training run on the synthetic
CT phantoms). The last printed line is the run directory (``result.json``, per-case CSV, NIfTI, PNG).
"""

from rayssl.cli import before_ray, parse_job_args
from rayssl.config import FinetuneConfig

if __name__ == "__main__":
    cfg, _ = parse_job_args("finetune", FinetuneConfig, __doc__.splitlines()[0], default_preset="tiny")
    from rayssl.finetune.driver import cross_validate, finetune, plan_finetune, plan_folds
    from rayssl.train.launch import init_ray

    if cfg.data.val_fold == "all":  # cross-validation: one run per fold, every fold planned before Ray starts
        folds = before_ray(plan_folds, cfg)
        init_ray()
        print(cross_validate(cfg, folds))
    else:
        plan = before_ray(plan_finetune, cfg)  # source, task, pre-trained weights, checked before Ray starts
        init_ray()
        print(finetune(cfg, plan=plan))
