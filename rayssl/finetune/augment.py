"""The papers' fine-tuning augmentation, applied per sample on the training worker.

3D (UNETR on BTCV and BraTS): flips p=0.2 per axis, rot90 in the axial plane p=0.2, intensity scale and
shift by up to 0.1 with p=0.1 each (MONAI dictionary transforms, image and label together), as SelfMedMAE's
fine-tuning (``configs/unetr_btcv_1gpu.yaml`` / ``unetr_msdbrats_1gpu.yaml`` ``Rand*_prob``, applied in
``lib/data/med_transforms.py get_scratch_train_transforms``). 2D (MAE fine-tuning on CXR14):
RandAugment ``rand-m9-mstd0.5-inc1`` (timm).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class SegAugment:
    """Random flips / rot90 / intensity of ``image [N, C, *roi]`` and ``label [N, *roi]``.

    Args:
        roi: patch shape (rot90 only when the first two axes are equal, so shapes are kept).
        seed: random seed (per worker).
        flip_prob, rot90_prob: per-axis flip and axial rot90 probabilities (SelfMedMAE: 0.2).
        intensity_prob: probability of the intensity scale and, independently, of the shift (SelfMedMAE: 0.1,
            so about 19% of the samples change intensity).
    """

    def __init__(self, roi, seed: int = 0, flip_prob: float = 0.2, rot90_prob: float = 0.2,
                 intensity_prob: float = 0.1):
        import monai.transforms as mt

        keys = ["image", "label"]
        steps = [mt.RandFlipd(keys, prob=flip_prob, spatial_axis=a) for a in range(len(roi))]
        if roi[0] == roi[1]:
            steps.append(mt.RandRotate90d(keys, prob=rot90_prob, max_k=3, spatial_axes=(0, 1)))
        steps += [mt.RandScaleIntensityd("image", factors=0.1, prob=intensity_prob),
                  mt.RandShiftIntensityd("image", offsets=0.1, prob=intensity_prob)]
        self.transform = mt.Compose(steps).set_random_state(seed)

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        out_x, out_y = [], []
        for x, y in zip(image, label):
            d = self.transform({"image": x, "label": y[None]})
            out_x.append(torch.as_tensor(d["image"]).as_subclass(torch.Tensor))
            out_y.append(torch.as_tensor(d["label"]).as_subclass(torch.Tensor)[0])
        return torch.stack(out_x).contiguous(), torch.stack(out_y).contiguous()


class RandAugment2D:
    """timm RandAugment on ``[N, 1, H, W]`` images in [0, 1] (via 8-bit greyscale-as-RGB PIL images).

    Args:
        seed: random seed (timm draws from Python's ``random``; it is seeded here).
        config: timm RandAugment string.
    """

    def __init__(self, seed: int = 0, config: str = "rand-m9-mstd0.5-inc1"):
        import random

        from timm.data.auto_augment import rand_augment_transform

        random.seed(seed)
        self.config = config
        self.transform = None
        self._make = lambda size: rand_augment_transform(config, {"translate_const": int(size * 0.45),
                                                                  "img_mean": (128, 128, 128)})

    def __call__(self, image: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        from PIL import Image

        if self.transform is None:
            self.transform = self._make(image.shape[-1])
        out = []
        for x in image:
            a = (x[0].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
            rgb = self.transform(Image.fromarray(a).convert("RGB"))
            out.append(torch.from_numpy(np.asarray(rgb.convert("L"), np.float32) / 255.0)[None])
        return torch.stack(out).to(image.dtype), target
