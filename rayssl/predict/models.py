"""The fine-tuned models a prediction uses: each rebuilt from its own run's record, checked to agree."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rayssl.config import FinetuneConfig
from rayssl.config.recipes import RECIPES
from rayssl.finetune.task import TaskSpec
from rayssl.models.weights_file import read_safetensors
from rayssl.train.layout import RunDir


@dataclass(frozen=True)
class PredictModel:
    """One fine-tuned network and what its run recorded: task, labels, recipe, spacing, ROI, channels."""

    path: str
    """The weights file."""
    cfg: FinetuneConfig
    spec: TaskSpec
    recipe: str
    spacing: tuple[float, ...] | None
    """Target spacing of the recipe as the run used it (``None``: the file's own)."""

    @property
    def roi(self) -> tuple[int, ...]:
        return self.cfg.sw_roi

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """The network with its fine-tuned weights, in eval mode on ``device``."""
        from rayssl.finetune.models import build_model

        model = build_model(self.cfg, self.spec.channels, self.spec.num_classes)
        model.load_state_dict(read_safetensors(self.path))
        return model.to(device).eval()

    def describe(self) -> dict:
        return {"path": self.path, "arch": self.cfg.model.arch, "mode": self.spec.mode, "classes": list(self.spec.class_names),
                "recipe": self.recipe, "spacing": self.spacing, "roi": list(self.roi), "channels": self.spec.channels}


def load_model(spec: str) -> PredictModel:
    """A fine-tuning run directory (or its ``best.safetensors``) as a :class:`PredictModel`.

    Raises:
        ValueError: no weights or no run record next to them, or a record that does not say what the
            network predicts.
    """
    path = Path(spec).expanduser()
    run = path if path.is_dir() else path.parent
    weights = path if path.is_file() else run / RunDir.BEST
    if not weights.is_file():
        raise ValueError(f"--model {spec}: no {RunDir.BEST} (expected a fine-tuning run directory or its "
                         f"{RunDir.BEST})")
    if weights.suffix != ".safetensors":
        raise ValueError(f"--model {spec}: only .safetensors weights are loaded (never pickles)")
    try:
        record = json.loads((run / RunDir.RESULT).read_text())
        task = record["task"]
        cfg = FinetuneConfig.model_validate(record["config"])
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--model {spec}: {run / RunDir.RESULT} is missing or not a fine-tuning record "
                         f"({e})") from None
    recipe = task.get("recipe") or cfg.data.recipe
    if recipe not in RECIPES:
        raise ValueError(f"--model {spec}: {run / RunDir.RESULT} does not say which preprocessing recipe the model was "
                         "trained with (fine-tune it again with this rayssl)")
    channels = task.get("channels")
    if channels is None:
        raise ValueError(f"--model {spec}: {run / RunDir.RESULT} does not record the input channels "
                         "(fine-tune it again)")
    spacing = task.get("spacing")
    spec_ = TaskSpec(task["mode"], int(task["num_classes"]), tuple(task["class_names"]), int(channels),
                     task.get("loss") or {"multiclass": "dicece", "brats_regions": "dice", "multilabel": "bce"}[task["mode"]])
    return PredictModel(str(weights.resolve()), cfg, spec_, recipe, tuple(spacing) if spacing else None)


def load_models(specs: list[str]) -> list[PredictModel]:
    """Load every model of an ensemble and check that they predict the same thing from the same input.

    Raises:
        ValueError: a model cannot be loaded, or two models disagree on task, labels, recipe, spacing or
            channels (each difference named).
    """
    if not specs:
        raise ValueError("--model: give at least one fine-tuning run directory")
    models = [load_model(s) for s in specs]
    first = models[0]
    for m in models[1:]:
        diff = [f"{k}: {first.path} has {a!r}, {m.path} has {b!r}" for k, a, b in (
            ("task", first.spec.mode, m.spec.mode), ("labels", first.spec.class_names, m.spec.class_names),
            ("outputs", first.spec.num_classes, m.spec.num_classes), ("recipe", first.recipe, m.recipe),
            ("spacing", first.spacing, m.spacing), ("channels", first.spec.channels, m.spec.channels)) if a != b]
        if diff:
            raise ValueError("the models of an ensemble must agree:\n  " + "\n  ".join(diff))
    return models
