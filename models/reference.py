"""The published E2Net decoder (y3none/E2Net), with its modules named as in the paper:
LFSM (lateral fovea search) -> CFZM (central fovea zooming) -> CCM (cognitive confirmation).

It reads the CAEM maps, finest first, at any strides and any number of levels >= 2. The
reference runs it on CAEM outputs all resized to the finest level (``CAEM(align="finest")``);
its trained recipe taps four stride-16 maps, so LFSM and CCM attend over 576 tokens at 384 px.
On a strides-4/8/16/32 pyramid with that alignment they would attend over 9,216 stride-4 tokens,
which costs more than the ViT-B encoder: ``models.heads`` is our answer to that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import TransformerBlock, conv_norm_act, resize_to, to_map, to_tokens
from models.heads import FocusHead


class LFSM(nn.Module):
    """Lateral fovea search: one pre-norm transformer block on the deepest level, then
    1x1 conv - norm - ReLU - 1x1 conv to a coarse map. The block's features are not passed on.

    ``forward(x [B, C, h, w]) -> coarse logits [B, 1, h, w]``.
    """

    def __init__(self, channels: int, heads: int = 8, mlp_ratio: float = 4.0, norm: str = "bn") -> None:
        super().__init__()
        self.block = TransformerBlock(channels, heads, mlp_ratio)
        self.predict = nn.Sequential(conv_norm_act(channels, channels // 2, 1, norm), nn.Conv2d(channels // 2, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.predict(to_map(self.block(to_tokens(x)), x))


class CFZM(FocusHead):
    """Central fovea zooming: every level becomes ``conv-norm-ReLU(G * sigmoid(M) + G)``, with M the
    coarse map resized to the level. This is exactly our focus stage, under the paper's name.

    ``forward(feats: list of [B, C, H_i, W_i], coarse [B, 1, h, w]) -> list of [B, C, H_i, W_i]``.
    """


class CCM(nn.Module):
    """Cognitive confirmation: gated cross-attention, then learned x2 upsampling stages.

    The query comes from the finest level; key and value from the deepest level, projected and
    resized to the query's size; multi-head attention without an output projection; a gate
    ``sigmoid(conv1x1([Q_level, A]))`` adds the attended features A to the finest level. Then
    ``num_levels - 1`` stages of (3x3 conv-norm-ReLU, bilinear x2), the first ``num_levels - 2``
    of them followed by a 3x3 conv fusing the next middle level, deepest first (G3, then G2 for
    four levels), as the reference wires it.

    ``forward(feats: list of num_levels maps [B, C, H_i, W_i], finest first) -> logits
    [B, 1, H_0 * 2**(num_levels-1), W_0 * 2**(num_levels-1)]`` (stride 2 for four stride-16 levels).
    """

    def __init__(self, channels: int, num_levels: int = 4, heads: int = 8, norm: str = "bn") -> None:
        super().__init__()
        if num_levels < 2:
            raise ValueError(f"CCM needs at least 2 levels (query and key/value), got {num_levels}")
        if channels % heads:
            raise ValueError(f"CCM width {channels} is not divisible by {heads} heads (set model.context_heads)")
        self.num_levels, self.heads = num_levels, heads
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Conv2d(2 * channels, channels, 1)
        self.up = nn.ModuleList(conv_norm_act(channels, channels, 3, norm) for _ in range(num_levels - 1))
        self.fuse = nn.ModuleList(nn.Conv2d(2 * channels, channels, 3, padding=1) for _ in range(num_levels - 2))
        self.predict = nn.Sequential(conv_norm_act(channels, channels // 2, 3, norm), nn.Conv2d(channels // 2, 1, 1))

    def attend(self, query: Tensor, context: Tensor) -> Tensor:
        """[B, C, H, W] query level, [B, C, h, w] context level -> attended [B, C, H, W]."""
        b, c = query.shape[:2]
        d = c // self.heads

        def heads(t: Tensor) -> Tensor:  # [B, C, H, W] -> [B, heads, H*W, d], channel groups per head
            return t.reshape(b, self.heads, d, -1).transpose(2, 3)

        q = heads(self.q(query))
        k, v = (heads(resize_to(proj(context), query)) for proj in (self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, H*W, d]
        return out.transpose(2, 3).reshape(query.shape)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        if len(feats) != self.num_levels:
            raise ValueError(f"CCM expects {self.num_levels} feature maps, got {len(feats)}")
        finest = feats[0]
        attended = self.attend(finest, feats[-1])
        x = finest + torch.sigmoid(self.gate(torch.cat((finest, attended), dim=1))) * attended
        middle = list(feats[-2:0:-1])  # deepest first
        for i, up in enumerate(self.up):
            x = F.interpolate(up(x), scale_factor=2, mode="bilinear", align_corners=False)
            if i < len(middle):
                x = self.fuse[i](torch.cat((x, resize_to(middle[i], x)), dim=1))
        return self.predict(x)


class E2NetRefDecoder(nn.Module):
    """LFSM on the deepest level -> CFZM on every level -> CCM.

    ``forward(feats: num_levels maps [B, C, H_i, W_i] finest first, size=(H, W)) -> [coarse, final]``,
    each logits [B, 1, H, W] (bilinearly resized to ``size``), final prediction last.

    ``coarse_sigmoid``: the coarse map is returned as probabilities (sigmoid, then the resize),
    which the loss reads as logits: the published E2Net's double sigmoid. Its coarse terms then
    see a map in (0, 1) whose "probabilities" sigmoid(p) lie in (0.5, 0.73), so they can never
    call a pixel background. CFZM is unaffected (it reads the coarse map through one sigmoid).
    """

    def __init__(
        self,
        channels: int = 256,
        num_levels: int = 4,
        *,
        heads: int = 8,
        norm: str = "bn",
        coarse_sigmoid: bool = False,
    ) -> None:
        super().__init__()
        self.num_levels, self.coarse_sigmoid = num_levels, coarse_sigmoid
        self.lfsm = LFSM(channels, heads, norm=norm)
        self.cfzm = CFZM(channels, num_levels, norm)
        self.ccm = CCM(channels, num_levels, heads, norm)

    def forward(self, feats: Sequence[Tensor], size: tuple[int, int]) -> list[Tensor]:
        if len(feats) != self.num_levels:
            raise ValueError(f"E2NetRefDecoder expects {self.num_levels} feature maps, got {len(feats)}")
        coarse = self.lfsm(feats[-1])
        final = self.ccm(self.cfzm(feats, coarse))
        if self.coarse_sigmoid:
            coarse = torch.sigmoid(coarse)
        return [resize_to(coarse, size), resize_to(final, size)]
