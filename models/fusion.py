"""Two encoders, one pyramid: a SAM2 Hiera's four levels (sharp, strides 4-32) fused with DINO's maps.

    d_i  = align_i(S_{source_i})           1x1 conv: a secondary map to the width of primary level i
    F_i  = reduce_i([P_i, resize(d_i)])    concatenated after level i at its size, 1x1 conv to ``channels``

``sources`` picks the secondary map of each level. SAM2-UNeXT's glue layer (``concat``) projects
DINO's deepest map onto every level; ``levels`` gives each Hiera level the DINO map at the same
place in its pyramid (finest with finest), so the shallow, local DINO layers meet the fine Hiera
levels. The 1x1 projection runs before the resize, at the secondary map's (usually smaller) size:
both are linear and the bilinear weights sum to one, so the order changes the cost only.

The primary pyramid is the config's ``model.encoder2`` (the Hiera), the secondary maps its
``model.encoder`` (DINO). :class:`FusedEncoder` runs both encoders (each resizes the image to its
own input size itself) and fuses their outputs; to the rest of the network it is one encoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FUSIONS = ("concat", "levels")  # the values of model.fusion


def fusion_sources(kind: str, levels: int, secondary_maps: int) -> list[int]:
    """The secondary map fused into each of ``levels`` primary levels: ``concat``, the last (deepest)
    of ``secondary_maps`` into every level; ``levels``, map i into level i."""
    if kind not in FUSIONS:
        raise ValueError(f"fusion '{kind}' is not one of {', '.join(FUSIONS)}")
    if kind == "concat":
        return [secondary_maps - 1] * levels
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
            # Resized even where the sizes already agree: a traced graph (ONNX) must not take that
            # shortcut for the example's size and keep it at every other size.
            d = F.interpolate(align(secondary[s].to(p.dtype)), size=p.shape[-2:], mode="bilinear", align_corners=False)
            out.append(reduce(torch.cat((p, d), dim=1)))
        return out


class FusedEncoder(nn.Module):
    """Two encoders and their fusion, seen as one encoder.

    Args:
        encoder2: the config's ``model.encoder2`` (a SAM2 Hiera): image -> the primary maps, whose
            levels the fused pyramid keeps; has ``out_channels``, ``strides``, ``patch_size`` and
            ``input_size`` (None: the image as given).
        encoder: the config's ``model.encoder`` (DINO): image -> the secondary maps fused into
            them; the same attributes.
        fusion: ``(primary maps, secondary maps) -> maps`` with ``out_channels`` (:class:`PyramidFusion`).

    The two are held as ``primary`` (``encoder2``) and ``secondary`` (``encoder``): those names are
    the state-dict keys of the checkpoints already written (``encoder.primary.trunk...``).

    ``forward(x [B, 3, H, W] in [0, 1]) -> list of [B, out_channels[i], h_i, w_i]``, the primary's
    levels. ``strides`` are the primary's, relative to its own input; ``patch_size`` is what H and W
    must be multiples of (1 when both encoders resize every image to their own size).
    """

    def __init__(self, encoder2: nn.Module, encoder: nn.Module, fusion: nn.Module) -> None:
        super().__init__()
        self.primary, self.secondary, self.fusion = encoder2, encoder, fusion
        self.out_channels = list(fusion.out_channels)
        self.strides = list(encoder2.strides)
        self.patch_size = math.lcm(*(e.patch_size for e in (encoder2, encoder) if e.input_size is None))

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.fusion(self.primary(x), self.secondary(x))

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Both trunks' parameters, frozen or not."""
        return self.primary.pretrained_parameters() + self.secondary.pretrained_parameters()

    def lora_parameters(self) -> list[nn.Parameter]:
        return self.primary.lora_parameters() + self.secondary.lora_parameters()

    def adapter_parameters(self) -> list[nn.Parameter]:
        return self.primary.adapter_parameters() + self.secondary.adapter_parameters()
