"""Necks that turn a ViT's four tapped stride-p maps into a pyramid at strides p/4, p/2, p and 2p.

Three kinds, keyed in :data:`PYRAMIDS` by the plain names the config's ``model.encoder.pyramid``
takes: ``"vitdet"`` (ViTDet's simple feature pyramid: learnable transposed convolutions up,
max-pooling down), ``"interpolate"`` (bilinear resizing, no weights, the trunk's width on every
level) and ``"projected"`` (E2Net-DINOv2's: a Linear, LayerNorm, GELU per level before resizing).
Each takes the trunk's width ``dim`` and has ``out_channels``; ``forward`` maps a list of four
[B, D, h, w] maps to the four levels. ``interpolate`` and ``projected`` also take ``sizes``:
``"patch"`` (the sizes of :func:`pyramid_sizes`) or ``"image"`` (those of :func:`image_pyramid_sizes`,
every level a bilinear resize, as E2Net-DINOv2's pyramid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid, one tapped layer per level.

    Four [B, D, h, w] maps at stride p -> [B, D/4, 4h, 4w], [B, D/2, 2h, 2w], [B, D, h, w],
    [B, D, ceil(h/2), ceil(w/2)].
    """

    def __init__(self, dim: int):
        super().__init__()
        from timm.layers import LayerNorm2d

        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, ceil_mode=True)  # ceil: an odd patch grid keeps its last row/column
        self.out_channels = [dim // 4, dim // 2, dim, dim]

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])]


def pyramid_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Sizes of the four levels built from an h x w patch grid: strides p/4, p/2, p and 2p
    ([4h, 4w], [2h, 2w], [h, w], [ceil(h/2), ceil(w/2)]; ceil keeps an odd grid's last row/column)."""
    return [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), (-(-h // 2), -(-w // 2))]


def image_pyramid_sizes(h: int, w: int, patch: int) -> list[tuple[int, int]]:
    """Sizes of the four levels at strides 4, 8, 16, 32 of the H x W = ``patch`` h x ``patch`` w image
    (floored: 129 / 64 / 32 / 16 at 518 px), whatever the patch size; at least 1 (below 32 px)."""
    H, W = h * patch, w * patch
    return [(max(H // s, 1), max(W // s, 1)) for s in (4, 8, 16, 32)]


SIZES = ("patch", "image")  # the values of model.encoder.pyramid_sizes


def _check_sizes(sizes: str) -> None:
    if sizes not in SIZES:
        raise ValueError(f"pyramid sizes '{sizes}' is not one of {', '.join(SIZES)}")


def _resize(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)


class InterpolatePyramid(nn.Module):
    """Four [B, D, h, w] maps at stride p, bilinearly resized to the sizes of :func:`pyramid_sizes`
    (those of :class:`SimpleFeaturePyramid`), keeping D channels on every level; no weights.

    The reference E2Net's multi-scale path: at 384 px with ViT-B/16 it gives ``[1, 768, 96, 96]``
    down to ``[1, 768, 12, 12]``.
    """

    def __init__(self, dim: int, patch: int = 16, sizes: str = "patch"):
        super().__init__()
        _check_sizes(sizes)
        self.out_channels = [dim] * 4
        self.patch, self.sizes = patch, sizes

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        h, w = maps[0].shape[-2:]
        sizes = image_pyramid_sizes(h, w, self.patch) if self.sizes == "image" else pyramid_sizes(h, w)
        return [_resize(m, s) for m, s in zip(maps, sizes)]


class ProjectedPyramid(nn.Module):
    """E2Net-DINOv2's pyramid: four [B, D, h, w] maps at stride p -> [B, D/4, 4h, 4w], [B, D/2, 2h, 2w],
    [B, D, h, w], [B, D, ceil(h/2), ceil(w/2)].

    Level i goes through its own ``Linear -> LayerNorm -> GELU`` over the channels (widths D/4, D/2,
    D, D), then to the sizes of :func:`pyramid_sizes`: bilinear x4 and x2 up (projecting first keeps
    their cost at the patch grid's size), and a 2x2 average down (ceil: an odd grid keeps its last
    row/column). On an even grid that average is what a bilinear resize by 1/2 computes; unlike a
    resize to ceil(h/2), it exports to ONNX correctly for odd grids too. ``sizes="image"``: every
    level bilinearly resized to :func:`image_pyramid_sizes` (as E2Net-DINOv2's; ``patch`` is the
    trunk's patch size).
    """

    def __init__(self, dim: int, patch: int = 16, sizes: str = "patch"):
        super().__init__()
        _check_sizes(sizes)
        self.patch, self.sizes = patch, sizes
        self.out_channels = [dim // 4, dim // 2, dim, dim]
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, c), nn.LayerNorm(c), nn.GELU()) for c in self.out_channels
        )

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        # The projection acts on the channels.
        up4, up2, same, down2 = (proj(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for m, proj in zip(maps, self.proj))
        if self.sizes == "image":
            sizes = image_pyramid_sizes(*maps[0].shape[-2:], self.patch)
            return [_resize(m, s) for m, s in zip((up4, up2, same, down2), sizes)]
        sizes = pyramid_sizes(*maps[0].shape[-2:])
        down2 = F.avg_pool2d(down2, 2, ceil_mode=True, count_include_pad=False)
        return [_resize(up4, sizes[0]), _resize(up2, sizes[1]), same.contiguous(), down2]


# The values of model.encoder.pyramid, as plain strings: this module never reads the config.
PYRAMIDS: dict[str, type[nn.Module]] = {
    "vitdet": SimpleFeaturePyramid,
    "interpolate": InterpolatePyramid,
    "projected": ProjectedPyramid,
}
