"""CAEM: cross-scale alignment and enhancement of the encoder pyramid.

Four encoder maps of possibly different widths become four maps of one width, with deep
semantics carried top-down into the shallow, high-resolution levels:

    r_i = reduce_i(F_i)                                  1x1 conv(-norm-act) to ``out_channels``
    G_4 = r_4;  G_i = fuse_i([r_i, up(G_{i+1})])         3x3 conv-norm-act, i = 3, 2, 1
    out_i = SE_i(G_i)                                    squeeze-excitation channel attention

The levels are aligned to a common *width* and a common *semantic* content; with ``align="own"``
each stays at its own stride. The reference design (``align="finest"``) also resizes every output
to the finest level's size; on a strides-4/8/16/32 pyramid that makes four stride-4 maps out of
two that carry no more information than their low-resolution sources, multiplies the cost of
every later stage on them (16x for the stride-16 level) and leaves no low-resolution level for
the coarse search (``models.heads`` resizes a level only where it is fused into another one).
The reference's trained recipe used four stride-16 maps (``simple``), where both are the same.

E2Net-DINOv2's CAEM is the same top-down path arranged differently: squeeze-excitation inside each
fusion (``se="fusions"``: the fused map is re-weighted before the next level reads it, and the deepest
level is never re-weighted), then a 3x3 conv-norm-ReLU on every aligned level (``out_conv``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.blocks import conv_norm_act, resize_to, squeeze_excite

ALIGNS = ("own", "finest")  # the values of model.caem_align
SE_PLACES = ("outputs", "fusions")  # the values of model.caem_se


class CAEM(nn.Module):
    """Cross-scale alignment and enhancement module.

    Args:
        in_channels: width of every encoder level (an int) or one width per level
            (``encoder.out_channels``).
        out_channels: width of the four output maps.
        norm: ``"gn"`` (GroupNorm, default) or ``"bn"``.
        num_levels: number of pyramid levels (4 for the DINOv3 encoder).
        align: ``"own"`` (each output at its level's size) or ``"finest"`` (every output resized to
            the finest level's size before squeeze-excitation, as the reference).
        reduce_norm: norm + ReLU after the 1x1 reductions; False gives a plain 1x1 conv with bias
            (the reference).
        se_bias: biases in the squeeze-excitation layers (the published E2Net's have none).
        se: ``"outputs"`` (squeeze-excitation on every output) or ``"fusions"`` (inside each fusion, after
            its conv; the deepest level gets none).
        out_conv: a 3x3 conv-norm-ReLU on every output, after the alignment (before ``"outputs"`` SE).

    ``forward(feats)``: list of ``num_levels`` maps [B, C_i, H_i, W_i], finest first (any
    strides, e.g. 4/8/16/32 or all 16) -> list of ``num_levels`` maps [B, out_channels, H_i, W_i]
    (``align="finest"``: all [B, out_channels, H_0, W_0]).
    """

    def __init__(
        self,
        in_channels: int | Sequence[int] = 768,
        *,
        out_channels: int = 128,
        norm: str = "gn",
        num_levels: int = 4,
        align: str = "own",
        reduce_norm: bool = True,
        se_bias: bool = True,
        se: str = "outputs",
        out_conv: bool = False,
    ) -> None:
        super().__init__()
        widths = [in_channels] * num_levels if isinstance(in_channels, int) else list(in_channels)
        if len(widths) != num_levels:
            raise ValueError(f"CAEM got {len(widths)} input widths {widths} for {num_levels} levels")
        if align not in ALIGNS:
            raise ValueError(f"CAEM align '{align}' is not one of {', '.join(ALIGNS)}")
        if se not in SE_PLACES:
            raise ValueError(f"CAEM se '{se}' is not one of {', '.join(SE_PLACES)}")
        self.num_levels, self.align = num_levels, str(align)
        self.reduce = nn.ModuleList(
            conv_norm_act(c, out_channels, 1, norm) if reduce_norm else nn.Conv2d(c, out_channels, 1) for c in widths
        )

        def fusion() -> nn.Module:
            conv = conv_norm_act(2 * out_channels, out_channels, 3, norm)
            return nn.Sequential(conv, squeeze_excite(out_channels, bias=se_bias)) if se == "fusions" else conv

        self.fuse = nn.ModuleList(fusion() for _ in widths[:-1])
        self.out = (
            nn.ModuleList(conv_norm_act(out_channels, out_channels, 3, norm) for _ in widths) if out_conv else None
        )
        self.attend = (
            nn.ModuleList(squeeze_excite(out_channels, bias=se_bias) for _ in widths) if se == "outputs" else None
        )

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if len(feats) != self.num_levels:
            raise ValueError(f"CAEM expects {self.num_levels} feature maps, got {len(feats)}")
        reduced = [reduce(f) for reduce, f in zip(self.reduce, feats)]
        fused = reduced[-1:]
        for i in range(self.num_levels - 2, -1, -1):  # coarse to fine
            deeper = resize_to(fused[0], reduced[i])
            fused.insert(0, self.fuse[i](torch.cat((reduced[i], deeper), dim=1)))
        if self.align == "finest":
            fused = [resize_to(g, fused[0]) for g in fused]
        if self.out is not None:
            fused = [conv(g) for conv, g in zip(self.out, fused)]
        if self.attend is not None:
            fused = [se(g) for se, g in zip(self.attend, fused)]
        return fused
