"""SAM2-UNeXT's decoder (WZH0120/SAM2-UNeXT): a U-Net of double 3x3 conv-norm-ReLU blocks, one output.

It reads the fused pyramid directly (no CAEM), deepest level first:

    x = double(up(F_4))                      width C -> C/2 -> C
    x = double(up([x, F_i]))  i = 3, 2, 1    width 2C -> C -> C, the skip padded to x's size
    out = up_bilinear(conv1x1(x))            one map at twice the finest level's size

``up`` is a x2 bilinear resize with ``align_corners=True`` (its ``nn.Upsample``); the last one is
``F.interpolate``'s default (``align_corners=False``). The skip joins *before* the upsampling, so each
block runs at twice its skip's size (512 px for the stride-4 level of a 1024-px input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import conv_norm_act, resize_to


def double_conv(cin: int, cout: int, mid: int, norm: str) -> nn.Module:
    """(3x3 conv -> norm -> ReLU) twice: [B, cin, H, W] -> [B, cout, H, W] through ``mid`` channels."""
    return nn.Sequential(conv_norm_act(cin, mid, 3, norm), conv_norm_act(mid, cout, 3, norm))


def pad_to(x: Tensor, like: Tensor) -> Tensor:
    """``x`` zero-padded (or cropped) to the spatial size of ``like``, the difference split as its ``Up`` does."""
    dy, dx = like.shape[-2] - x.shape[-2], like.shape[-1] - x.shape[-1]
    return x if dy == dx == 0 else F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])


class UNetDecoder(nn.Module):
    """U-Net over ``num_levels`` maps of width ``channels`` (module docstring).

    ``forward(feats: num_levels maps [B, C, H_i, W_i] finest first, size=(H, W)) -> [final]``, logits
    [B, 1, H, W] (bilinearly resized to ``size`` from twice the finest level's size).
    """

    def __init__(self, channels: int = 128, num_levels: int = 4, norm: str = "bn") -> None:
        super().__init__()
        c = channels
        self.num_levels = num_levels
        self.deepest = double_conv(c, c, c // 2, norm)
        self.ups = nn.ModuleList(double_conv(2 * c, c, c, norm) for _ in range(num_levels - 1))  # deepest skip first
        self.head = nn.Conv2d(c, 1, 1)

    @staticmethod
    def _up(x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)

    def forward(self, feats: Sequence[Tensor], size: tuple[int, int]) -> list[Tensor]:
        if len(feats) != self.num_levels:
            raise ValueError(f"UNetDecoder expects {self.num_levels} feature maps, got {len(feats)}")
        x = self.deepest(self._up(feats[-1]))
        for block, skip in zip(self.ups, reversed(feats[:-1])):
            x = block(self._up(torch.cat((x, pad_to(skip, x)), dim=1)))
        out = F.interpolate(self.head(x), scale_factor=2, mode="bilinear", align_corners=False)
        return [resize_to(out, size)]
