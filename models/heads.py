"""The E2Net decoder: coarse search -> focus -> refine, with deep supervision.

All global attention runs on the stride-16 and stride-32 levels (576 and 144 tokens at 384 px);
the stride-8 and stride-4 levels are only touched by 3x3 convolutions. The reference E2Net
(``models.reference``) resizes every CAEM level to the finest one and attends there: 576 tokens
at stride 16 in its trained recipe (four stride-16 maps), but 9,216 tokens (~85 M attention
entries per head, more than the whole ViT-B encoder costs) on a strides-4/8/16/32 pyramid.

Levels are indexed finest first: 0 (stride 4), 1 (stride 8), 2 (stride 16), 3 (stride 32); with a
``simple`` encoder all four are at stride 16 and the same code runs without any resizing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.blocks import Attention, TransformerBlock, conv_norm_act, resize_to, to_map, to_tokens

CONTEXT_LEVEL = 2  # stride 16: the finest level where global attention is affordable


class SearchHead(nn.Module):
    """Coarse search: global self-attention over one low-resolution level, then a coarse map.

    ``forward(x [B, C, h, w]) -> (context [B, C, h, w], coarse logits [B, 1, h, w])``.
    A depthwise 3x3 convolution adds position information before attention (a conditional
    position encoding), so any input size works without interpolating a position table.
    """

    def __init__(self, channels: int, heads: int = 4, depth: int = 2, norm: str = "gn") -> None:
        super().__init__()
        self.pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.blocks = nn.Sequential(*(TransformerBlock(channels, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(channels)
        self.predict = nn.Sequential(conv_norm_act(channels, channels, 3, norm), nn.Conv2d(channels, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x + self.pos(x)
        context = to_map(self.norm(self.blocks(to_tokens(x))), x)
        return context, self.predict(context)


class FocusHead(nn.Module):
    """Focus: modulate every level with the coarse map, ``F' = conv(F * A + F)``, A = sigmoid(coarse).

    ``forward(feats: list of [B, C, H_i, W_i], coarse [B, 1, h, w]) -> list of [B, C, H_i, W_i]``.
    The ``+ F`` keeps features outside the coarse map alive, so a missed region can still be found.
    """

    def __init__(self, channels: int, num_levels: int = 4, norm: str = "gn") -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv_norm_act(channels, channels, 3, norm) for _ in range(num_levels))

    def forward(self, feats: Sequence[Tensor], coarse: Tensor) -> list[Tensor]:
        out = []
        for f, conv in zip(feats, self.convs):
            attention = torch.sigmoid(resize_to(coarse, f))
            out.append(conv(f * attention + f))
        return out


class RefineHead(nn.Module):
    """Refine: gated cross-attention from the stride-16 level to the stride-32 level, then
    progressive upsampling that fuses the stride-8 and stride-4 levels with 3x3 convolutions.

    ``forward(feats: 4 maps [B, C, H_i, W_i], finest first) -> (side logits at level 1's size,
    final logits at level 0's size)``, both [B, 1, ., .].
    The gate ``sigmoid(conv1x1([F, A]))`` lets each position decide how much semantic context
    to take, so detail the stride-32 level has lost is not overwritten.
    """

    def __init__(self, channels: int, heads: int = 4, norm: str = "gn") -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(channels)
        self.norm_kv = nn.LayerNorm(channels)
        self.cross = Attention(channels, heads)
        self.gate = nn.Conv2d(2 * channels, channels, 1)
        self.fuse8 = conv_norm_act(2 * channels, channels, 3, norm)
        self.fuse4 = conv_norm_act(2 * channels, channels, 3, norm)
        self.side = nn.Conv2d(channels, 1, 1)
        self.predict = nn.Sequential(conv_norm_act(channels, channels // 2, 3, norm), nn.Conv2d(channels // 2, 1, 1))

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        f4, f8, f16, f32 = feats
        q, kv = to_tokens(f16), to_tokens(f32)
        attended = to_map(self.cross(self.norm_q(q), self.norm_kv(kv)), f16)
        x = f16 + torch.sigmoid(self.gate(torch.cat((f16, attended), dim=1))) * attended
        x = self.fuse8(torch.cat((f8, resize_to(x, f8)), dim=1))
        side = self.side(x)
        x = self.fuse4(torch.cat((f4, resize_to(x, f4)), dim=1))
        return side, self.predict(x)


class E2NetDecoder(nn.Module):
    """Search -> focus -> refine on the four CAEM maps.

    ``forward(feats: 4 maps [B, C, H_i, W_i] finest first, size=(H, W)) -> [coarse, side, final]``,
    each logits [B, 1, H, W] (bilinearly resized to ``size``), final prediction last.
    """

    def __init__(self, channels: int = 128, heads: int = 4, norm: str = "gn", search_depth: int = 2) -> None:
        super().__init__()
        self.search = SearchHead(channels, heads, search_depth, norm)
        self.focus = FocusHead(channels, 4, norm)
        self.refine = RefineHead(channels, heads, norm)

    def forward(self, feats: Sequence[Tensor], size: tuple[int, int]) -> list[Tensor]:
        if len(feats) != 4:
            raise ValueError(f"E2NetDecoder expects 4 feature maps, got {len(feats)}")
        context, coarse = self.search(feats[CONTEXT_LEVEL])
        levels = list(feats)
        levels[CONTEXT_LEVEL] = context
        side, final = self.refine(self.focus(levels, coarse))
        return [resize_to(m, size) for m in (coarse, side, final)]
