"""Does a Genesis U-Net fine-tuning collapse? A Ray-free probe of the label-efficiency benchmark's Genesis arm.

    python benchmarks/collapse_probe.py [--task mri|ct] [--optimizer adamw|sgd] [--lr 5e-3] [--labelled 1]
        [--seeds 0,1,2] [--epochs 16] [--roi 32] [--sampling classes|balanced|foreground] [--pos-fraction 0.33]

Fine-tunes the benchmark's Genesis U-Net (8 base channels, instance norm) from random weights on ``--labelled``
MRI phantoms (``synthetic:mri:12``, 1.5 mm; ``--task ct``: the CT phantoms at 3 mm, 7 organs), 32^3 crops sampled
by class, 32 crops an epoch, batch 4: the
benchmark's settings; AdamW betas 0.9/0.95, weight decay 0.05 as its ``tiny`` fine-tuning preset), and after
every epoch scores the validation phantoms. Prints one JSON line per seed with, per epoch: the last batch's
DiceCE loss, the validation mean Dice, the fraction of validation voxels predicted foreground, and the mean
logit of the last batch. A collapsed run shows a validation Dice that stops moving together with a foreground
fraction pinned at 0, at 1 or at the fraction of non-zero voxels. ``--roi 16`` makes the tumour larger than the
crop (24 mm at 1.5 mm), the situation the class-centred crops are suspected to collapse in; ``--sampling balanced``
centres only ``--pos-fraction`` of the crops on a labelled voxel (nnU-Net's one third), the rest anywhere;
``foreground`` draws the class of each centred crop first (nnU-Net's foreground oversampling).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from rayssl.config import DataConfig, build_config
from rayssl.data.patches import sample_patches
from rayssl.data.preprocess import load_case
from rayssl.data.sources import resolve_source
from rayssl.finetune.evaluate import evaluate_segmentation
from rayssl.finetune.task import SegLoss
from rayssl.data.synthetic import CT_LABELS
from rayssl.models.genesis_unet import GenesisUNet

TASKS = {  # the label-efficiency benchmark's Genesis arm on each phantom kind
    "mri": dict(source="synthetic:mri:12", recipe="mri_genesis", spacing=1.5, channels=4, mode="brats_regions",
                outputs=3, names=["tc", "wt", "et"]),
    "ct": dict(source="synthetic:ct:12", recipe="ct_btcv", spacing=3.0, channels=1, mode="multiclass", outputs=8,
               names=[CT_LABELS[k] for k in range(1, 8)]),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASKS), default="mri", help="MRI phantoms (BraTS regions, 1.5 mm) or CT "
                   "phantoms (7 organs, 3 mm)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--labelled", type=int, default=1)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--roi", type=int, default=32, help="cubic crop side in voxels")
    p.add_argument("--sampling", choices=["classes", "balanced", "foreground"], default="classes")
    p.add_argument("--pos-fraction", type=float, default=1 / 3, help="balanced sampling's crops centred on a label")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    roi, task = (args.roi,) * 3, TASKS[args.task]
    spacing = (task["spacing"],) * 3
    base = {"source": task["source"], "folds": 4, "val_fold": 0, "test_fold": 1, "roi": list(roi),
            "spacing": list(spacing), "sampling": args.sampling, "pos_fraction": args.pos_fraction,
            "patches_per_volume": 32 // args.labelled}
    val = []
    for case in resolve_source(build_config(DataConfig, base)).split("val"):
        val.append({**load_case(case, task["recipe"], spacing, channels=task["channels"]), "case_id": case.case_id})
    for seed in (int(s) for s in args.seeds.split(",")):
        data = build_config(DataConfig, {**base, "train_cases": args.labelled, "subset_seed": seed, "seed": seed})
        train = [load_case(c, task["recipe"], spacing, channels=task["channels"]) for c in resolve_source(data).split("train")]
        torch.manual_seed(seed)
        model = GenesisUNet(task["channels"], task["outputs"], 8, "instance", sigmoid=False)
        opt = (torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
               if args.optimizer == "adamw" else torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9))
        loss_fn, rng, log, t = SegLoss(task["mode"], "dicece"), np.random.default_rng(seed), [], time.time()
        for epoch in range(args.epochs):
            crops = [c for v in train for c in sample_patches(v, data, rng)]
            order = rng.permutation(len(crops))
            for i in range(0, len(order) - 3, 4):
                batch = [crops[j] for j in order[i:i + 4]]
                out = model(torch.as_tensor(np.stack([c["image"] for c in batch])).float())
                loss = loss_fn(out, torch.as_tensor(np.stack([c["label"] for c in batch])).long())
                opt.zero_grad()
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                ev = evaluate_segmentation(model, val, task["mode"], task["outputs"], task["names"], roi, 0.25, 4,
                                           hd95=False)
            model.train()
            log.append([epoch, round(loss.item(), 4), round(ev["mean_dice"], 4), round(ev["foreground"], 4),
                        round(out.detach().mean().item(), 3)])
        print(json.dumps({**vars(args), "seed": seed, "wall_s": round(time.time() - t), "epochs_log": log}), flush=True)


if __name__ == "__main__":
    main()
