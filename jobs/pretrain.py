"""Self pre-training (MAE or Models Genesis) on Ray Train + DeepSpeed.

    python jobs/pretrain.py [--preset NAME] [--config FILE] [key=value ...]

With no arguments: the ``tiny`` preset on the embedded synthetic CT phantoms, local Ray, CPU or GPU.
The last printed line is the run directory. A pool of sources (docs/data.md, Pools)::

    python jobs/pretrain.py --preset pool_ct
    python jobs/pretrain.py data.source=[msd:/data/Task03_Liver,folder:/archive/ct,dicom:/pacs/export]
    python jobs/pretrain.py data.source=pool:/data/pool.yaml
"""

from rayssl.cli import before_ray, parse_job_args
from rayssl.config import PretrainConfig

if __name__ == "__main__":
    cfg, _ = parse_job_args("pretrain", PretrainConfig, __doc__.splitlines()[0], default_preset="tiny")
    from rayssl.pretrain.driver import plan_pretrain, pretrain
    from rayssl.train.launch import init_ray

    plan = before_ray(plan_pretrain, cfg)  # the source, its cases and the recipe, checked before Ray starts
    init_ray()
    print(pretrain(cfg, plan=plan))
