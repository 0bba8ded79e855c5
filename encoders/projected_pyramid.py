"""E2Net-DINOv2's pyramid: each tapped map projected per level, then resized to strides p/4 .. 2p."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pyramid_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Sizes of the four levels built from an h x w patch grid: strides p/4, p/2, p and 2p
    ([4h, 4w], [2h, 2w], [h, w], [ceil(h/2), ceil(w/2)]; ceil keeps an odd grid's last row)."""
    return [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), (-(-h // 2), -(-w // 2))]


class ProjectedPyramid(nn.Module):
    """Four [B, D, h, w] maps at stride p -> [B, D/4, 4h, 4w], [B, D/2, 2h, 2w], [B, D, h, w],
    [B, D, ceil(h/2), ceil(w/2)].

    Level i goes through its own ``Linear -> LayerNorm -> GELU`` over the channels (widths D/4, D/2,
    D, D), then is resized bilinearly to the sizes of :func:`pyramid_sizes`. Projecting before
    resizing keeps the cost of the two upsampled levels at the patch grid's size.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.out_channels = [dim // 4, dim // 2, dim, dim]
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, c), nn.LayerNorm(c), nn.GELU()) for c in self.out_channels
        )

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = pyramid_sizes(*maps[0].shape[-2:])
        out = []
        for m, proj, size in zip(maps, self.proj, sizes):
            m = proj(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # the projection acts on channels
            if tuple(m.shape[-2:]) == size:
                out.append(m.contiguous())
            else:
                out.append(F.interpolate(m, size=size, mode="bilinear", align_corners=False))
        return out
