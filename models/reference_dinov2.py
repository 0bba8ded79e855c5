"""E2Net-DINOv2's decoder (y3none/E2Net-DINOv2): LFSM -> CFZM -> CCM as that repository builds them.

The same three stages as the published E2Net's (:mod:`models.reference`), arranged otherwise:

- LFSM: two transformer blocks on the deepest CAEM level; each attends over the level average-pooled
  to a ``grid`` x ``grid`` grid when it holds more than grid^2 positions (its LayerNorm on the pooled
  tokens, query/key/value without bias), resizes the attended map back bilinearly and adds it to the
  level; the MLP then runs at the level's own size. A 1x1 head and a sigmoid give the coarse map.
- CFZM: our focus stage (``models.heads.FocusHead``) fed those probabilities, so it applies a second
  sigmoid (its attention lies in (0.5, 0.73)); a 1x1 head and a sigmoid on the finest focused level
  give the refined map.
- CCM: gated cross-attention from the finest level to the deepest, both average-pooled to ``grid`` x
  ``grid`` when either side is larger; the heads' output is gated by ``sigmoid(Linear(out))``,
  projected, resized back and added to the finest level. Then a light decoder at half the width:
  3x3 conv-norm-ReLU, x2; with the third level concatenated, 3x3 conv-norm-ReLU, x2; with the second,
  3x3 conv-norm-ReLU; 3x3 conv-norm-ReLU to a quarter of the width and a 1x1 to the final map, at 4x the
  finest level (516 px for 129-px levels at 518).

Every map leaves as a probability, resized bilinearly to the input's size as that repository does,
and is returned as the logit of that probability (clamped to [1e-6, 1 - 1e-6], where float32 still
tells p from 1), so that the loss's and the test's sigmoid read the very probabilities it scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.blocks import Attention, conv_norm_act, resize_to, to_map, to_tokens
from models.heads import FocusHead

EPS = 1e-6  # probabilities are clamped to [EPS, 1 - EPS] before they are turned back into logits


def pooled(x: Tensor, grid: int) -> Tensor:
    """[B, C, H, W] average-pooled to [B, C, grid, grid] (adaptive: any H, W)."""
    return F.adaptive_avg_pool2d(x, (grid, grid))


def as_logits(prob: Tensor, size: tuple[int, int]) -> Tensor:
    """Probabilities [B, 1, h, w] resized bilinearly to ``size``, returned as logits."""
    return torch.logit(resize_to(prob, size), eps=EPS)


class PooledBlock(nn.Module):
    """LFSM's block: ``x + up(attn(LN(pool(x))))`` (pooled when H*W > grid^2), then ``x + MLP(LN(x))``.

    ``forward(x [B, C, H, W]) -> [B, C, H, W]``.
    """

    def __init__(self, dim: int, heads: int = 8, grid: int = 32, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.grid = grid
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        small = pooled(x, self.grid) if h * w > self.grid**2 else x
        tokens = self.norm1(to_tokens(small))
        x = x + resize_to(to_map(self.attn(tokens, tokens), small), x)
        tokens = to_tokens(x)
        return to_map(tokens + self.mlp(self.norm2(tokens)), x)


class PooledLFSM(nn.Module):
    """``blocks`` :class:`PooledBlock` s, then 1x1 conv-norm-ReLU (half width) and a 1x1 conv.

    ``forward(x [B, C, h, w]) -> coarse probabilities [B, 1, h, w]``.
    """

    def __init__(self, channels: int, heads: int = 8, grid: int = 32, blocks: int = 2, norm: str = "bn") -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(PooledBlock(channels, heads, grid) for _ in range(blocks)))
        self.predict = nn.Sequential(conv_norm_act(channels, channels // 2, 1, norm), nn.Conv2d(channels // 2, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.predict(self.blocks(x)))


class PooledCCM(nn.Module):
    """Gated cross-attention on pooled grids, then the light decoder (module docstring).

    ``forward(feats: 4 maps [B, C, H, W], finest first) -> final probabilities [B, 1, 4H, 4W]``.
    """

    def __init__(self, channels: int, heads: int = 8, grid: int = 32, norm: str = "bn") -> None:
        super().__init__()
        mid = channels // 2
        self.grid = grid
        self.norm_q = nn.LayerNorm(channels)
        self.norm_kv = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads, bias=False)
        self.gate = nn.Linear(channels, channels)
        self.up1 = conv_norm_act(channels, mid, 3, norm)
        self.up2 = conv_norm_act(mid + channels, mid, 3, norm)
        self.up3 = conv_norm_act(mid + channels, mid, 3, norm)
        self.predict = nn.Sequential(conv_norm_act(mid, channels // 4, 3, norm), nn.Conv2d(channels // 4, 1, 1))

    def cross(self, query: Tensor, context: Tensor) -> Tensor:
        """[B, C, H, W] query level, [B, C, h, w] context level -> the query level plus its attended features."""
        h, w = query.shape[-2:]
        shrink = h > self.grid or w > self.grid
        q_map, kv_map = (pooled(query, self.grid), pooled(context, self.grid)) if shrink else (query, context)
        out = self.attn.attend(self.norm_q(to_tokens(q_map)), self.norm_kv(to_tokens(kv_map)))
        out = self.attn.proj(out * torch.sigmoid(self.gate(out)))
        return query + resize_to(to_map(out, q_map), query)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        g1, g2, g3, g4 = feats
        x = self.up1(self.cross(g1, g4))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.up2(torch.cat((x, resize_to(g3, x)), dim=1))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.up3(torch.cat((x, resize_to(g2, x)), dim=1))
        return torch.sigmoid(self.predict(x))


class E2NetDinov2Decoder(nn.Module):
    """LFSM on the deepest level -> CFZM on every level (with the refined map) -> CCM.

    ``forward(feats: 4 maps [B, C, H_i, W_i] finest first, size=(H, W)) -> [coarse, refined, final]``,
    each the logits of probabilities resized to ``size`` (module docstring), final prediction last.
    """

    def __init__(self, channels: int = 256, *, heads: int = 8, grid: int = 32, norm: str = "bn") -> None:
        super().__init__()
        self.lfsm = PooledLFSM(channels, heads, grid, norm=norm)
        self.cfzm = FocusHead(channels, 4, norm)
        self.refine = nn.Conv2d(channels, 1, 1)  # its heads on the three other levels feed nothing: not built
        self.ccm = PooledCCM(channels, heads, grid, norm)

    def forward(self, feats: Sequence[Tensor], size: tuple[int, int]) -> list[Tensor]:
        if len(feats) != 4:
            raise ValueError(f"E2NetDinov2Decoder expects 4 feature maps, got {len(feats)}")
        coarse = self.lfsm(feats[-1])
        focused = self.cfzm(feats, coarse)  # sigmoid(resize(coarse)): the second sigmoid
        refined = torch.sigmoid(self.refine(focused[0]))
        final = self.ccm(focused)
        return [as_logits(p, size) for p in (coarse, refined, final)]
