"""Preprocess a source or a pool once into the volume cache: one memory-mapped Arrow file per case, and a manifest.

    python jobs/prepare_data.py [--source SPEC] [--out DIR] [--preset NAME] [--config FILE] [key=value ...]

With no arguments: the ``tiny`` preset (synthetic CT phantoms) written to ``./runs/data/<name>``. A pool:
``data.source=[SPEC,SPEC,...]`` or ``--source pool:FILE.yaml``. Resumable: a re-run into the same ``--out`` skips
the cases already there. One Ray task per case: across the cluster for an ``s3://`` / ``gs://`` ``--out``, on this
node for a local folder. Joins the cluster in ``RAY_ADDRESS`` if set, else starts a local Ray. The last printed
line is the output folder.
"""

from rayssl.cli import before_ray, fail, parse_job_args
from rayssl.config import PrepareConfig


def _flags(parser):
    parser.add_argument("--source", help="data source SPEC, e.g. msd:/data/BTCV (same as data.source=SPEC)")
    parser.add_argument("--out", help="output folder or s3:// / gs:// URI (same as out=DIR); a re-run into it resumes")


if __name__ == "__main__":
    cfg, args = parse_job_args("prepare", PrepareConfig, __doc__.splitlines()[0], default_preset="tiny", extra=_flags)
    try:
        if args.source is not None:
            cfg.data.source = args.source
        if args.out is not None:
            cfg.out = args.out
    except ValueError as e:
        fail(str(e))
    from rayssl.data.pipeline import prepare, resolve_recipe
    from rayssl.data.sources import resolve_pool, resolve_source
    from rayssl.train.launch import init_ray

    # the source (or pool) and its recipe, checked before Ray starts
    source = before_ray(resolve_pool if cfg.data.is_pool else resolve_source, cfg.data)
    recipe = before_ray(resolve_recipe, cfg.data, source)  # any number of cases: an empty split is written empty
    init_ray()
    print(prepare(cfg, source, recipe))
