"""UNETR (Hatamizadeh et al., WACV 2022) on our :class:`ViTEncoder`, built from MONAI's UNETR blocks.

MONAI's ``UNETR`` owns its own ViT, whose parameter names and position embedding differ from the MAE
encoder; so the decoder blocks are MONAI's and the encoder is the pre-trained one. For patch size
``2^k`` the decoder has ``k`` upsampling stages fed by ``k - 1`` intermediate hidden states (blocks
4, 7, 10 of 12 for patch 16, MONAI's layout), the final normed encoder output and the input itself.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import Tensor, nn

from rayssl.models.vit import ViTEncoder


def default_hidden_blocks(depth: int, stages: int) -> list[int]:
    """The 1-based blocks ``depth * j // stages + 1`` for ``j = 1 .. stages - 1``.

    MONAI (``monai/networks/nets/unetr.py``, ``forward``) and SelfMedMAE (``lib/networks/unetr_decoder.py``,
    ``UNETR_decoder``) take ``hidden_states_out[3], [6], [9]`` of 12 blocks, i.e. the 0-based positions
    ``depth * j / 4``: blocks 4, 7, 10. The same positions at any depth give (4, 7, 10) at depth 12 and
    patch 16, (5, 9) at patch 8 (SelfMedMAE's ``UNETRx8_decoder``: ``hidden_states_out[4], [8]``), and
    ``stages - 1`` distinct blocks in ``1..depth`` whenever ``depth >= stages - 1`` (steps of
    ``depth / stages >= 1``, or blocks ``1 .. depth`` when ``depth == stages - 1``).
    """
    return [depth * j // stages + 1 for j in range(1, stages)]


class UNETR(nn.Module):
    """ViT encoder + UNETR decoder for 3D segmentation.

    Args:
        img_size: input ROI (3 ints divisible by ``patch_size``).
        patch_size: ViT patch side, a power of two (16 in the paper).
        in_channels: input channels.
        out_channels: output channels (classes, or regions for sigmoid outputs).
        embed_dim, depth, num_heads: encoder size (see ``VIT_SIZES``).
        drop_path_rate: encoder stochastic depth (0.1 in the paper).
        feature_size: decoder width (16 in the paper).
        hidden_blocks: 1-based encoder blocks feeding the skip connections, strictly increasing
            (``log2(patch_size) - 1`` of them; default :func:`default_hidden_blocks`: 4, 7, 10 for
            depth 12 and patch 16, as MONAI's ``hidden_states_out[3], [6], [9]``).
        norm_name: decoder normalisation (``"instance"`` in the paper).
    """

    def __init__(self, img_size: Iterable[int] = (96, 96, 96), patch_size: int = 16, in_channels: int = 1,
                 out_channels: int = 14, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 drop_path_rate: float = 0.1, feature_size: int = 16, hidden_blocks: Sequence[int] | None = None,
                 norm_name: str = "instance"):
        super().__init__()
        stages = int(round(math.log2(patch_size))) if patch_size > 0 else 0
        if patch_size < 2 or 2**stages != patch_size:
            raise ValueError(f"UNETR needs a power-of-two patch_size >= 2, got {patch_size}")
        if out_channels < 1 or feature_size < 1:
            raise ValueError(f"out_channels={out_channels} and feature_size={feature_size} must be >= 1")
        self.encoder = ViTEncoder(3, img_size, patch_size, in_channels, embed_dim, depth, num_heads,
                                  drop_path_rate=drop_path_rate, learnable_pos_embed=True)
        hidden_blocks = list(hidden_blocks) if hidden_blocks is not None else default_hidden_blocks(depth, stages)
        # increasing: the encoder returns hidden states in block order, matched to skips shallow to deep
        if (len(hidden_blocks) != stages - 1 or any(not 1 <= b <= depth for b in hidden_blocks)
                or any(a >= b for a, b in zip(hidden_blocks, hidden_blocks[1:]))):
            raise ValueError(f"hidden_blocks={hidden_blocks}: need {stages - 1} increasing block indices in "
                             f"1..{depth} for patch_size={patch_size}")
        self.hidden_blocks, self.grid_size = tuple(hidden_blocks), self.encoder.grid_size
        self.out_channels = out_channels
        fs, kw = feature_size, dict(spatial_dims=3, norm_name=norm_name, res_block=True)
        self.stem = UnetrBasicBlock(in_channels=in_channels, out_channels=fs, kernel_size=3, stride=1, **kw)
        # skip j (1 = shallowest) is upsampled k - j times to grid * 2^(k - j), with fs * 2^j channels
        self.skips = nn.ModuleList([
            UnetrPrUpBlock(in_channels=embed_dim, out_channels=fs * 2**j, num_layer=stages - j - 1, kernel_size=3,
                           stride=1, upsample_kernel_size=2, conv_block=True, **kw)
            for j in range(1, stages)
        ])
        self.ups = nn.ModuleList()
        cin = embed_dim
        for j in range(stages - 1, -1, -1):  # deepest first; the last one joins the stem at full size
            self.ups.append(UnetrUpBlock(in_channels=cin, out_channels=fs * 2**j, kernel_size=3,
                                         upsample_kernel_size=2, **kw))
            cin = fs * 2**j
        self.head = UnetOutBlock(spatial_dims=3, in_channels=fs, out_channels=out_channels)

    def _volume(self, tokens: Tensor) -> Tensor:
        # tokens: [N, 1 + L, D] -> [N, D, *grid] (cls token dropped)
        n, _, d = tokens.shape
        return tokens[:, 1:].reshape(n, *self.grid_size, d).movedim(-1, 1).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, *img_size]`` -> logits ``[N, out_channels, *img_size]``."""
        enc = self.encoder(x, return_hidden=self.hidden_blocks)
        skips = [blk(self._volume(h)) for blk, h in zip(self.skips, enc["hidden"])]
        y = self._volume(enc["tokens"])
        for up, skip in zip(self.ups, [*reversed(skips), self.stem(x)]):
            y = up(y, skip)
        return self.head(y)
