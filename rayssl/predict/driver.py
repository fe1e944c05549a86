"""``predict(cfg)``: segment or classify new cases with fine-tuned models, on Ray Data.

The cases stream through a pool of actors (one model replica each, on a GPU when the cluster has them):
each actor reads and preprocesses a case with the models' recipe, runs the ensemble (and the TTA flips)
with sliding-window inference, maps the result back onto the file's own grid and writes it atomically.
Memory holds the volumes in flight, one per actor. A case whose output exists already is skipped, so
re-running resumes.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rayssl.config import DataConfig, PredictConfig, ScaleConfig, dump_config
from rayssl.data.io import write_nifti_like
from rayssl.data.sources import Case, Source
from rayssl.predict.models import PredictModel, load_models
from rayssl.train.artifacts import provenance

log = logging.getLogger(__name__)

CASES_CSV = "cases.csv"
SUMMARY = "summary.json"
PREDICTIONS_CSV = "predictions.csv"


@dataclass(frozen=True)
class PredictPlan:
    """A prediction run, resolved before Ray starts: the models, the input's cases and what is left to do."""

    out: Path
    models: list[PredictModel]
    data: DataConfig
    source: Source
    todo: list[Case]
    done: list[str]


def output_name(case_id: str) -> str:
    return f"{case_id}.nii.gz"


def plan_predict(cfg: PredictConfig) -> PredictPlan:
    """Load the models, list the input with their recipe, and find the cases already predicted.

    Raises:
        ValueError: a model that cannot be loaded, models that disagree, an input that cannot be listed.
    """
    from rayssl.data.pipeline import resolve_recipe
    from rayssl.data.sources import resolve_source

    models = load_models(cfg.model)
    first = models[0]
    if not cfg.input:
        raise ValueError("--input: give the cases to predict (a data source spec)")
    data = DataConfig(source=cfg.input, recipe=first.recipe, spacing=first.spacing, roi=first.cfg.data.roi,
                      channels=cfg.channels or first.spec.channels, strict=cfg.strict,
                      allow_outside_root=cfg.allow_outside_root, folds=2, splits=["train", "val", "test"])
    source = resolve_source(data)
    resolve_recipe(data, source)  # the models' ROI fits the input's dimensionality
    cases = sorted(source.cases, key=lambda c: c.case_id)
    if not cases:
        raise ValueError(f"--input {cfg.input}: no usable case ({len(source.missing)} unusable)")
    out = Path(cfg.out).expanduser().resolve()
    if first.spec.classification:
        table = out / PREDICTIONS_CSV
        done = {r["case_id"] for r in csv.DictReader(table.open())} if table.is_file() else set()
    else:
        done = {c.case_id for c in cases if (out / output_name(c.case_id)).is_file()}
    return PredictPlan(out, models, data, source, [c for c in cases if c.case_id not in done], sorted(done))


class Predictor:
    """A Ray Data actor: the models loaded once, then one case per call."""

    def __init__(self, models: list[PredictModel], cfg: dict, data: dict, out: str):
        import torch

        self.cfg, self.data, self.out = PredictConfig.model_validate(cfg), DataConfig.model_validate(data), Path(out)
        self.models = models
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.networks = [m.build(self.device) for m in models]
        self.spec = models[0].spec

    def __call__(self, batch: dict) -> dict:
        rows = [self.one(Case(**json.loads(c))) for c in batch["case"]]
        return {k: [r.get(k) for r in rows] for k in ("case_id", "input", "output", "seconds", "status", "reason", "probs")}

    def one(self, case: Case) -> dict:
        from rayssl.data.io import BadInput
        from rayssl.data.pipeline import image_size_2d
        from rayssl.data.preprocess import load_case
        from rayssl.predict.infer import classify_probabilities, on_source_grid, segment_probabilities

        t0 = time.perf_counter()
        row = {"case_id": case.case_id, "input": ";".join(case.image), "output": "", "status": "done", "reason": ""}
        try:
            volume = load_case(case, self.data.recipe, self.data.spacing, image_size_2d(self.data), self.data.channels)
            if self.spec.classification:  # the image as fine-tuning evaluated it: centre-cropped to the ROI
                from rayssl.finetune.evaluate import center_crop

                image = center_crop(volume["image"], self.models[0].roi)
                row["probs"] = json.dumps(classify_probabilities(self.networks, image, self.cfg.tta, self.device).tolist())
            else:
                overlap = self.cfg.overlap if self.cfg.overlap is not None else self.models[0].cfg.eval.sw_overlap
                probs = segment_probabilities(self.networks, volume["image"], self.spec, [m.roi for m in self.models],
                                              overlap, self.cfg.sw_batch_size, self.cfg.tta, self.device)
                labels, source_probs = on_source_grid(probs, volume, self.spec, self.cfg.save_probabilities)
                path = self.out / output_name(case.case_id)
                reference = None if case.kind == "dicom" else case.image[0]  # a NIfTI input's header, kept
                if source_probs is not None:  # the labels last: their file marks the case as finished
                    write_nifti_like(np.moveaxis(source_probs, 0, -1).astype(np.float32), reference,
                                     self.out / f"{case.case_id}_prob.nii.gz", volume["source_affine"])
                write_nifti_like(labels, reference, path, volume["source_affine"])
                row["output"] = str(path)
        except BadInput as e:
            if self.cfg.strict:
                raise
            row.update(status="quarantined", reason=f"{e.path or case.image[0]}: {e}")
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row


def predict(cfg: PredictConfig, plan: PredictPlan | None = None) -> str:
    """Predict every case of ``cfg.input`` not predicted yet; return the output folder.

    Writes ``<out>/<case>.nii.gz`` (labels; with ``save_probabilities`` also ``<case>_prob.nii.gz``) on each
    input file's own grid and header, or ``<out>/predictions.csv`` for classifiers; ``cases.csv`` (case, input,
    output, seconds, status) and ``summary.json`` (counts, quarantined inputs, models, settings, versions).
    """
    import ray

    from rayssl.data.context import dataset_context
    from rayssl.data.sources import QuarantineError
    from rayssl.train.launch import use_gpu

    plan = plan or plan_predict(cfg)
    plan.out.mkdir(parents=True, exist_ok=True)
    gpu = use_gpu(ScaleConfig(use_gpu=cfg.use_gpu))
    actors = cfg.actors or max(1, int(ray.cluster_resources().get("GPU", 0)) if gpu else
                               int(ray.cluster_resources().get("CPU", 1) // cfg.cpus_per_actor))
    actors = max(1, min(actors, len(plan.todo)))
    spec = plan.models[0].spec
    log.info("predicting %d cases (%d done before, %d unusable in the listing) with %d model(s)%s, %d actor(s) on "
             "%s; outputs in %s", len(plan.todo), len(plan.done), len(plan.source.missing), len(plan.models),
             ", flip TTA" if cfg.tta == "flip" else "", actors, "GPU" if gpu else "CPU", plan.out)
    rows = [{"case_id": "", "input": p, "output": "", "seconds": 0.0, "status": "quarantined", "reason": f"{p}: {r}"}
            for p, r in plan.source.missing]
    t0 = time.perf_counter()
    if plan.todo:
        with dataset_context():
            ds = ray.data.from_items([{"case": json.dumps(asdict(c))} for c in plan.todo],
                                     override_num_blocks=len(plan.todo))
            ds = ds.map_batches(Predictor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                                num_gpus=1 if gpu else 0, num_cpus=cfg.cpus_per_actor,
                                fn_constructor_kwargs={"models": plan.models, "cfg": dump_config(cfg),
                                                       "data": dump_config(plan.data), "out": str(plan.out)})
            try:
                for i, row in enumerate(ds.iter_rows(), start=1):
                    rows.append(row)
                    left = (time.perf_counter() - t0) / i * (len(plan.todo) - i)
                    log.info("%d/%d %s: %s (%.1f s), about %.0f s left", i, len(plan.todo), row["case_id"],
                             row["status"] if row["status"] != "quarantined" else row["reason"], row["seconds"], left)
            except Exception as e:  # strict mode: the actor's BadInput
                if cfg.strict:
                    raise QuarantineError(f"--input {cfg.input}: strict mode, a case could not be used: {e}") from None
                raise
    if spec.classification:
        _append_predictions(plan.out / PREDICTIONS_CSV, [r for r in rows if r.get("probs")], spec.class_names)
    _append_cases(plan.out / CASES_CSV, rows)
    quarantined = [r for r in rows if r["status"] == "quarantined"]
    summary = {"predicted": sum(r["status"] == "done" for r in rows), "skipped_done_before": len(plan.done),
               "quarantined": len(quarantined), "quarantined_inputs": [r["reason"] for r in quarantined],
               "seconds": time.perf_counter() - t0, "actors": actors, "gpu": gpu,
               "models": [m.describe() for m in plan.models], "settings": dump_config(cfg), **provenance()}
    (plan.out / SUMMARY).write_text(json.dumps(summary, indent=1, default=str))
    log.info("%d predicted, %d quarantined, %d done before", summary["predicted"], len(quarantined), len(plan.done))
    return str(plan.out)


def _append_cases(path: Path, rows: list[dict]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "input", "output", "seconds", "status", "reason"], extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)


def _append_predictions(path: Path, rows: list[dict], names) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["case_id", "input", *names])
        for r in sorted(rows, key=lambda r: r["case_id"]):
            w.writerow([r["case_id"], r["input"], *(f"{p:.6f}" for p in json.loads(r["probs"]))])
