"""Two encoders, one pyramid: a SAM2 Hiera's four levels (sharp, strides 4-32) fused with DINO's maps.

    d_i  = align_i(S_{source_i})           1x1 conv: a secondary map to the width of primary level i
    F_i  = reduce_i([P_i, resize(d_i)])    concatenated after level i at its size, 1x1 conv to ``channels``

``sources`` picks the secondary map of each level. SAM2-UNeXT's glue layer (``concat``) projects
DINO's deepest map onto every level; ``levels`` gives each Hiera level the DINO map at the same
place in its pyramid (finest with finest), so the shallow, local DINO layers meet the fine Hiera
levels. The 1x1 projection runs before the resize, at the secondary map's (usually smaller) size:
both are linear and the bilinear weights sum to one, so the order changes the cost only.

:class:`FusedEncoder` runs both encoders, each on the image resized once to its own input size,
and fuses their outputs; to the rest of the network it is one encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import resize_to


class FusionSource(StrEnum):
    """Which secondary map each primary level receives (``model.fusion``)."""

    concat = "concat"  # the deepest one, on every level (SAM2-UNeXT)
    levels = "levels"  # level i of both pyramids


def fusion_sources(kind: FusionSource | str, levels: int) -> list[int]:
    """The secondary map index for each of ``levels`` primary levels."""
    if FusionSource(kind) == FusionSource.concat:
        return [levels - 1] * levels
    return list(range(levels))


class PyramidFusion(nn.Module):
    """Concatenation fusion of two pyramids (module docstring).

    Args:
        primary_channels: widths of the primary levels, finest first (they set the output sizes).
        secondary_channels: widths of the secondary maps.
        channels: width of every output level.
        sources: for each primary level, the index of the secondary map fused into it
            (:func:`fusion_sources`); each secondary map used gets one 1x1 projection per level.

    ``forward(primary, secondary)``: lists of [B, C_i, H_i, W_i] and [B, D_j, h_j, w_j] ->
    list of [B, channels, H_i, W_i], one per primary level.
    """

    def __init__(
        self, primary_channels: Sequence[int], secondary_channels: Sequence[int], channels: int, sources: Sequence[int]
    ) -> None:
        super().__init__()
        if len(sources) != len(primary_channels) or not all(0 <= s < len(secondary_channels) for s in sources):
            raise ValueError(
                f"sources {list(sources)}: give one index into the {len(secondary_channels)} secondary maps "
                f"for each of the {len(primary_channels)} primary levels"
            )
        self.sources = list(sources)
        self.out_channels = [channels] * len(primary_channels)
        self.align = nn.ModuleList(nn.Conv2d(secondary_channels[s], c, 1) for s, c in zip(sources, primary_channels))
        self.reduce = nn.ModuleList(nn.Conv2d(2 * c, channels, 1) for c in primary_channels)

    def forward(self, primary: Sequence[Tensor], secondary: Sequence[Tensor]) -> list[Tensor]:
        if len(primary) != len(self.reduce):
            raise ValueError(f"fusion expects {len(self.reduce)} primary levels, got {len(primary)}")
        out = []
        for p, s, align, reduce in zip(primary, self.sources, self.align, self.reduce):
            d = resize_to(align(secondary[s].to(p.dtype)), p)
            out.append(reduce(torch.cat((p, d), dim=1)))
        return out


class FusedEncoder(nn.Module):
    """Two encoders and their fusion, seen as one encoder.

    Args:
        primary: image -> maps whose levels the fused pyramid keeps (a SAM2 Hiera); has
            ``out_channels`` and ``strides``.
        secondary: image -> maps fused into them (DINO).
        fusion: ``(primary maps, secondary maps) -> maps`` with ``out_channels`` (:class:`PyramidFusion`).
        primary_size, secondary_size: the square side each encoder sees; the image is resized to it
            (bilinear, on the image's device) unless it already has that size. None: the image as given.

    ``forward(x [B, 3, H, W] in [0, 1]) -> list of [B, out_channels[i], h_i, w_i]`` at the primary's
    levels for its input size. ``strides`` are the primary's, relative to its own input.
    """

    def __init__(
        self,
        primary: nn.Module,
        secondary: nn.Module,
        fusion: nn.Module,
        primary_size: int | None = None,
        secondary_size: int | None = None,
    ) -> None:
        super().__init__()
        self.primary, self.secondary, self.fusion = primary, secondary, fusion
        self.sizes = (primary_size, secondary_size)
        self.out_channels = list(fusion.out_channels)
        self.strides = list(primary.strides)

    @staticmethod
    def _resize(x: Tensor, size: int | None) -> Tensor:
        if size is None or tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def forward(self, x: Tensor) -> list[Tensor]:
        primary = self.primary(self._resize(x, self.sizes[0]))
        secondary = self.secondary(self._resize(x, self.sizes[1]))
        return self.fusion(primary, secondary)
