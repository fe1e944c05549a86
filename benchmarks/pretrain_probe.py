"""What a 3D MAE pre-training learned: held-out reconstruction and a linear probe, against random weights.

    python benchmarks/pretrain_probe.py RUN_DIR [--crops 16] [--seed 0]

RUN_DIR is a finished MAE pre-training run (``jobs/pretrain.py``). Side by side, its weights and the same
network at its random initialisation (the run's seed):

* reconstruction: the MAE loss (MSE on masked patches) on new crops of the validation cases, which
  pre-training never saw, with the same masks for both;
* linear probe: a logistic regression on the frozen encoder's patch tokens predicts the majority label of
  each patch (background or an organ), fitted on crops of the training cases and scored on crops of the
  test cases (balanced accuracy: every class counts alike). Features that carry anatomy score higher
  than random features.

Prints both figures for both weights and the ratios; the last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def crops_of(cases, data, crops: int, epoch: int) -> list[dict]:
    from rayssl.data.crops import case_crops

    data = data.model_copy(update={"patches_per_volume": crops, "flip_prob": 0.0})
    return [p for v in cases for p in case_crops(v, data, epoch)]


def patch_labels(encoder, label: torch.Tensor) -> np.ndarray:
    """Majority label of each ViT patch: ``[N, *roi]`` -> ``[N * L]``, in the encoder's token order."""
    pixels = encoder.patch_pixels(label[:, None].float())  # [N, L, p**3]
    return torch.mode(pixels.flatten(0, 1).long(), dim=1).values.numpy()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--crops", type=int, default=16, help="crops per case")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler

    from rayssl.config import PretrainConfig
    from rayssl.data.pipeline import resolve_recipe
    from rayssl.data.preprocess import load_case
    from rayssl.data.sources import resolve_source
    from rayssl.pretrain.methods import build_model
    from rayssl.train.checkpoint import load_weights

    run = Path(args.run_dir)
    cfg = PretrainConfig.model_validate(json.loads((run / "config.json").read_text()))
    if cfg.model.method != "mae" or cfg.data.spatial_dims != 3:
        raise SystemExit(f"error: {run} is not a 3D MAE pre-training run")
    checkpoint = json.loads((run / "result.json").read_text())["checkpoint"]
    source = resolve_source(cfg.data)
    recipe = resolve_recipe(cfg.data, source)
    cases = {s: [load_case(c, recipe, cfg.data.spacing) for c in source.split(s)] for s in ("train", "val", "test")}
    if not cases["val"] or not cases["test"]:
        raise SystemExit(f"error: {cfg.data.source} has no validation or test cases under the run's folds")

    torch.manual_seed(cfg.seed)
    models = {"random": build_model(cfg, source.channels).eval()}
    models["pretrained"] = build_model(cfg, source.channels).eval()
    models["pretrained"].load_state_dict(load_weights(checkpoint))
    stack = lambda crops, k: torch.from_numpy(np.stack([c[k] for c in crops]))  # noqa: E731
    val = stack(crops_of(cases["val"], cfg.data, args.crops, 10**6), "image").float()
    train_crops = crops_of(cases["train"], cfg.data, args.crops, 10**6 + 1)
    test_crops = crops_of(cases["test"], cfg.data, args.crops, 10**6 + 2)
    y_train = patch_labels(models["random"].encoder, stack(train_crops, "label"))
    y_test = patch_labels(models["random"].encoder, stack(test_crops, "label"))

    out = {}
    with torch.no_grad():
        for name, model in models.items():
            torch.manual_seed(args.seed)  # the same masks for both
            loss = float(model(val, mask_ratio=cfg.model.mask_ratio)[0])
            feats = [model.encoder(stack(c, "image").float())["tokens"][:, 1:].flatten(0, 1).numpy()
                     for c in (train_crops, test_crops)]
            scaler = StandardScaler().fit(feats[0])
            probe = LogisticRegression(max_iter=2000).fit(scaler.transform(feats[0]), y_train)
            acc = balanced_accuracy_score(y_test, probe.predict(scaler.transform(feats[1])))
            out[name] = {"heldout_reconstruction_mse": loss, "probe_balanced_accuracy": float(acc)}
            print(f"{name:>10}: held-out reconstruction MSE {loss:.5f}, linear probe balanced accuracy {acc:.4f}")
    out["mse_ratio_pretrained_to_random"] = out["pretrained"]["heldout_reconstruction_mse"] / out["random"]["heldout_reconstruction_mse"]
    out["probe_gain"] = out["pretrained"]["probe_balanced_accuracy"] - out["random"]["probe_balanced_accuracy"]
    out["classes"] = int(len(np.unique(y_train)))
    print(f"reconstruction MSE pretrained / random = {out['mse_ratio_pretrained_to_random']:.3f}; "
          f"probe gain {out['probe_gain']:+.4f} ({out['classes']} classes, chance {1 / out['classes']:.3f})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
