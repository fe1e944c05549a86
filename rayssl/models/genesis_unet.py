"""The U-Net of Models Genesis (Zhou et al., MedIA 2021), built from MONAI blocks.

Four levels with two ``3x3x3 conv + norm + ReLU`` each (32/64 -> 64/128 -> 128/256 -> 256/512 for
``base_channels=32``), max-pool down, transposed conv up, skip concatenation, ``1x1x1`` conv out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import Tensor, nn

NORMS = ("batch", "instance", "group")


class BatchStatNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm that normalises with the current batch's statistics in train and eval mode alike.

    As ``ContBatchNorm3d`` of Models Genesis (``pytorch/unet3d.py``: ``F.batch_norm(..., True, ...)``).
    The running statistics (kept, so state dicts match ``nn.BatchNorm*d``) are updated in train mode
    only and never used.
    """

    def forward(self, x: Tensor) -> Tensor:
        track = self.training and self.track_running_stats
        if track:
            self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / max(1, int(self.num_batches_tracked))
        return F.batch_norm(x, self.running_mean if track else None, self.running_var if track else None,
                            self.weight, self.bias, True, momentum, self.eps)


def _norm(kind: str, channels: int):
    if kind == "group":
        return ("group", {"num_groups": math.gcd(8, channels)})
    if kind == "instance":
        return ("instance", {"affine": True})
    return "batch"


class GenesisUNet(nn.Module):
    """Models Genesis U-Net (3 poolings: inputs must divide by 8 on every axis).

    Args:
        in_channels: input channels.
        out_channels: output channels (1 for restoration, classes for segmentation).
        base_channels: width of the first conv (32 in the paper; e.g. 8 for tiny runs).
        norm: ``"batch"`` (the paper's: batch statistics in eval too, :class:`BatchStatNorm`; poor with
            1 sample per worker), ``"instance"`` or ``"group"``.
        sigmoid: apply a sigmoid to the output (restoration targets lie in [0, 1]).
        spatial_dims: 3 (the paper) or 2.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_channels: int = 32,
                 norm: str = "batch", sigmoid: bool = True, spatial_dims: int = 3):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r} must be one of {NORMS}")
        if min(in_channels, out_channels, base_channels) < 1:
            raise ValueError(f"in_channels={in_channels}, out_channels={out_channels}, "
                             f"base_channels={base_channels} must be >= 1")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims, self.sigmoid, self.norm = spatial_dims, sigmoid, norm

        def conv(cin: int, cout: int) -> Convolution:
            block = Convolution(spatial_dims, cin, cout, kernel_size=3, act="relu", norm=_norm(norm, cout),
                                adn_ordering="NA")
            if norm == "batch":  # batch statistics in eval too, as the reference's ContBatchNorm3d
                block.adn.N = BatchStatNorm(cout)
            return block

        b = base_channels
        # level k: b*2^k then b*2^(k+1) channels; the last level is the bottleneck (no pool)
        self.down = nn.ModuleList()
        cin = in_channels
        for k in range(4):
            self.down.append(nn.Sequential(conv(cin, b * 2 ** k), conv(b * 2 ** k, b * 2 ** (k + 1))))
            cin = b * 2 ** (k + 1)
        self.pool = (nn.MaxPool3d if spatial_dims == 3 else nn.MaxPool2d)(2)
        tconv = nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d
        self.up_conv = nn.ModuleList()
        self.up = nn.ModuleList()
        for k in (2, 1, 0):  # up-convolution keeps the width, then concat the skip (b*2^(k+1) ch)
            self.up_conv.append(tconv(cin, cin, kernel_size=2, stride=2))
            self.up.append(nn.Sequential(conv(cin + b * 2 ** (k + 1), b * 2 ** (k + 1)),
                                         conv(b * 2 ** (k + 1), b * 2 ** (k + 1))))
            cin = b * 2 ** (k + 1)
        self.out = Convolution(spatial_dims, cin, out_channels, kernel_size=1, conv_only=True)
        self.feature_channels = [b * 2 ** (k + 1) for k in range(4)]

    def _check(self, x: Tensor) -> None:
        if x.ndim != 2 + self.spatial_dims or any(s % 8 for s in x.shape[2:]):
            raise ValueError(f"input must be [N, C, *spatial] with {self.spatial_dims} spatial dims each "
                             f"divisible by 8, got {list(x.shape)}")
        values = math.prod([s // 8 for s in x.shape[2:]]) * (x.shape[0] if self.norm == "batch" else 1)
        if self.norm != "group" and values == 1:  # one value per channel: no statistics to normalise with
            raise ValueError(f"norm={self.norm!r} needs more than one bottleneck voxel (input > 8 voxels on "
                             f"some axis{', or a batch > 1' if self.norm == 'batch' else ''}), got {list(x.shape)}")

    def encode(self, x: Tensor) -> list[Tensor]:
        """Skip features of levels 1-3 and the bottleneck (channels ``feature_channels``)."""
        self._check(x)
        feats = []
        for k, level in enumerate(self.down):
            x = level(x if k == 0 else self.pool(x))
            feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """``[N, in, *spatial]`` -> ``[N, out, *spatial]`` (in [0, 1] when ``sigmoid``)."""
        *skips, x = self.encode(x)
        for up_conv, level, skip in zip(self.up_conv, self.up, reversed(skips)):
            x = level(torch.cat([up_conv(x), skip], dim=1))
        x = self.out(x)
        return torch.sigmoid(x) if self.sigmoid else x
