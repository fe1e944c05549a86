"""A residual-encoder U-Net (nnU-Net's ResEnc presets; the network nnssl pre-trains), built from MONAI's DynUNet
blocks, with the masked-image-modelling switches of nnssl: a sparse (Spark3D) encoder that re-applies the mask
after every residual block, and mask tokens that fill the masked positions before the decoder.

Encoder stage ``s``: a residual block of stride 1 (first stage) or 2 (MONAI ``UnetResBlock``: two 3^d convolutions
with affine instance norm and leaky ReLU 0.01, a 1^d projection on the skip when the shape changes), then
``blocks[s] - 1`` residual blocks of stride 1. Decoder: per stage a transposed convolution, the skip concatenated,
two convolutions (MONAI ``UnetUpBlock``). A 1^d convolution maps the finest stage to the output.

Where it differs from nnssl's ResEnc-L (nnssl ``architectures/architecture_registry.py get_res_enc_l``, blocks of
TaWald/dynamic-network-architectures): there a 3^d conv stem comes first and the blocks are ResNet-D (average
pooling on a strided skip), the decoder has one convolution per stage; its Spark3D re-masks after every
convolution and normalises over the visible voxels only (``architectures/spark_utils.py``), then densifies each
stage with a norm, the mask token and a 3^d projection (``spark_model.py``). Here the mask is re-applied after
each residual block, the norms see the zeros, and the densification is the mask token alone (nnssl's
``EfficientSpark3D``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import Tensor, nn

RESENC_SIZES: dict[str, dict[str, tuple[int, ...]]] = {
    "tiny": dict(features=(8, 16, 32, 64), blocks=(1, 1, 2, 2)),  # the CPU defaults (3 downsamplings)
    "small": dict(features=(16, 32, 64, 128, 256), blocks=(1, 2, 2, 3, 3)),
    "base": dict(features=(32, 64, 128, 256, 320, 320), blocks=(1, 3, 4, 6, 6, 6)),
    # nnU-Net's ResEnc-L: the encoder of "base"; what makes it L in nnU-Net and nnssl is its patch and batch
    # (the cnn_mae_resenc_ct preset), which are set by the data config, not here
    "large": dict(features=(32, 64, 128, 256, 320, 320), blocks=(1, 3, 4, 6, 6, 6)),
}
NORM = ("instance", {"affine": True})
ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


class ResEncUNet(nn.Module):
    """Residual-encoder U-Net; its input sides must divide by ``2 ** (len(features) - 1)``.

    Args:
        in_channels: input channels.
        out_channels: output channels (the input's channels to reconstruct, or the classes to segment).
        features: channels of each stage, finest first.
        blocks: residual blocks of each encoder stage.
        spatial_dims: 3 or 2.
        sparse: masked-image modelling as Spark3D: :meth:`forward` given a mask zeroes the masked positions after
            every residual block of the encoder (so they carry no signal into later convolutions) and fills them
            with a learnt mask token of each stage before the decoder.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, features: Sequence[int] = RESENC_SIZES["base"]["features"],
                 blocks: Sequence[int] = RESENC_SIZES["base"]["blocks"], spatial_dims: int = 3, sparse: bool = False):
        super().__init__()
        features, blocks = tuple(int(f) for f in features), tuple(int(b) for b in blocks)
        if len(features) != len(blocks) or len(features) < 2 or min(features + blocks) < 1:
            raise ValueError(f"features={features} and blocks={blocks} need the same length >= 2 and values >= 1")
        if spatial_dims not in (2, 3) or min(in_channels, out_channels) < 1:
            raise ValueError(f"spatial_dims={spatial_dims} must be 2 or 3, in/out channels >= 1")
        self.features, self.blocks, self.spatial_dims, self.sparse = features, blocks, spatial_dims, sparse
        self.divisor = 2 ** (len(features) - 1)
        d = spatial_dims
        self.encoder = nn.ModuleList()
        cin = in_channels
        for s, (f, n) in enumerate(zip(features, blocks)):
            stage = [UnetResBlock(d, cin, f, 3, 1 if s == 0 else 2, NORM, ACT)]
            stage += [UnetResBlock(d, f, f, 3, 1, NORM, ACT) for _ in range(n - 1)]
            self.encoder.append(nn.Sequential(*stage))
            cin = f
        self.decoder = nn.ModuleList([UnetUpBlock(d, features[s + 1], features[s], 3, 1, 2, NORM, ACT)
                                      for s in reversed(range(len(features) - 1))])
        self.head = UnetOutBlock(d, features[0], out_channels)
        if sparse:
            self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, f, *[1] * d)) for f in features])
            for token in self.mask_tokens:
                nn.init.trunc_normal_(token, std=0.02)

    def _visible(self, mask: Tensor, like: Tensor) -> Tensor:
        # mask [N, 1, *spatial], 1 = masked -> [N, 1, *like's spatial], 1 where any voxel of the cell is visible
        pool = F.adaptive_max_pool3d if self.spatial_dims == 3 else F.adaptive_max_pool2d
        return pool(1.0 - mask.to(like.dtype), like.shape[2:])

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``[N, in, *spatial]`` -> ``[N, out, *spatial]``; ``mask`` ``[N, 1, *spatial]`` (1 = masked) is used by the
        sparse variant only (the dense one sees the masked input as it is)."""
        if x.ndim != 2 + self.spatial_dims or any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"input must be [N, C, *spatial] with {self.spatial_dims} spatial sides divisible by "
                             f"{self.divisor}, got {list(x.shape)}")
        sparse = self.sparse and mask is not None
        skips = []
        for s, stage in enumerate(self.encoder):
            if not sparse:
                x = stage(x)
                skips.append(x)
                continue
            for block in stage:
                x = block(x)
                visible = self._visible(mask, x)
                x = x * visible  # x: [N, C_s, *spatial_s], nothing flows on from masked positions
            skips.append(x + self.mask_tokens[s] * (1.0 - visible))  # densified for the decoder
        x = skips.pop()
        for up, skip in zip(self.decoder, reversed(skips)):
            x = up(x, skip)
        return self.head(x)
