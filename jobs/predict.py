"""Segment or classify new cases with fine-tuned models; every output on its input file's own grid.

    python jobs/predict.py --model RUN_OR_WEIGHTS[,RUN_OR_WEIGHTS...] --input SPEC --out DIR [key=value ...]

``--model``: fine-tuning run directories (or their ``best.safetensors``); several make an ensemble (their
probabilities are averaged). ``--input``: any source spec (folder, CSV, MSD, cxr14); labels are not needed.
Options as ``key=value``: ``tta=flip``, ``save_probabilities=true``, ``overlap=0.5``, ``actors=N``,
``use_gpu=true``. Re-running with the same ``--out`` skips the cases already written. The last printed
line is the output folder.
"""

from rayssl.cli import before_ray, fail, parse_job_args
from rayssl.config import PredictConfig


def _flags(parser):
    parser.add_argument("--model", required=True, help="fine-tuning run directories or weights, comma-separated")
    parser.add_argument("--input", required=True, help="data source SPEC of the cases to predict")
    parser.add_argument("--out", required=True, help="output folder")


if __name__ == "__main__":
    cfg, args = parse_job_args("predict", PredictConfig, __doc__.splitlines()[0], extra=_flags)
    try:
        cfg.model = [m.strip() for m in args.model.split(",") if m.strip()]
        cfg.input, cfg.out = args.input, args.out
    except ValueError as e:
        fail(str(e))
    from rayssl.predict.driver import plan_predict, predict
    from rayssl.train.launch import init_ray

    plan = before_ray(plan_predict, cfg)  # the models and the input's cases, checked before Ray starts
    init_ray()
    print(predict(cfg, plan))
