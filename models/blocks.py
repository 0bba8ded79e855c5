"""Small building blocks shared by CAEM and the decoder heads.

Convolutions, norms and squeeze-excitation come from torch/torchvision; the attention blocks
are thin wrappers around ``F.scaled_dot_product_attention`` so that the fused kernels (flash /
memory-efficient) run on GPU.
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation


def gn_groups(channels: int) -> int:
    """32 groups (Wu & He's default), fewer for narrow layers so each group keeps >= 4 channels."""
    groups = 32
    while groups > 1 and (channels % groups or channels // groups < 4):
        groups //= 2
    return groups


NORMS = {  # keyed by the values of model.norm
    # the same in train and eval and independent of the per-GPU batch
    "gn": lambda channels: nn.GroupNorm(gn_groups(channels), channels),
    # use with SyncBatchNorm for DDP if the batch per GPU is small
    "bn": nn.BatchNorm2d,
}


def norm_layer(kind: str, channels: int) -> nn.Module:
    """``"gn"``: GroupNorm; ``"bn"``: BatchNorm2d (the values of model.norm)."""
    return NORMS[kind](channels)


def conv_norm_act(cin: int, cout: int, kernel_size: int = 3, norm: str = "gn", act: bool = True) -> nn.Module:
    """Conv (no bias: the norm has one) -> norm -> ReLU; [B, cin, H, W] -> [B, cout, H, W]."""
    return Conv2dNormActivation(
        cin,
        cout,
        kernel_size,
        norm_layer=partial(norm_layer, norm),
        activation_layer=nn.ReLU if act else None,
    )


def squeeze_excite(channels: int, ratio: int = 16, bias: bool = True) -> nn.Module:
    """SENet channel attention: x * sigmoid(fc(relu(fc(avgpool(x))))); keeps at least 8 hidden units.
    ``bias=False``: its two layers have no bias (the published E2Net's)."""
    se = SqueezeExcitation(channels, max(channels // ratio, 8))
    if not bias:
        se.fc1.bias = se.fc2.bias = None
    return se


def resize_to(x: Tensor, like: Tensor | tuple[int, int]) -> Tensor:
    """Bilinear resize of [B, C, h, w] to the spatial size of ``like`` (a tensor or (H, W)); no-op if equal."""
    size = tuple(like.shape[-2:]) if isinstance(like, Tensor) else tuple(like)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def to_tokens(x: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, H*W, C]."""
    return x.flatten(2).transpose(1, 2)


def to_map(tokens: Tensor, like: Tensor) -> Tensor:
    """[B, H*W, C] -> [B, C, H, W] with the spatial size of ``like``."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, *like.shape[-2:])


class Attention(nn.Module):
    """Multi-head attention of query tokens [B, Nq, C] over key/value tokens [B, Nk, C] -> [B, Nq, C]."""

    def __init__(self, dim: int, heads: int, bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads (set model.context_heads)")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=bias)  # bias=False: query, key and value projections without bias
        self.kv = nn.Linear(dim, 2 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim)

    def attend(self, query: Tensor, context: Tensor) -> Tensor:
        """The heads' outputs, concatenated, before the output projection: [B, Nq, C]."""
        b, nq, c = query.shape
        d = c // self.heads
        q = self.q(query).view(b, nq, self.heads, d).transpose(1, 2)  # [B, h, Nq, d]
        k, v = self.kv(context).view(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)  # 2 x [B, h, Nk, d]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, Nq, d]
        return out.transpose(1, 2).reshape(b, nq, c)

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        return self.proj(self.attend(query, context))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on tokens [B, N, C]: x + attn(LN x) then x + MLP(LN x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y)
        return x + self.mlp(self.norm2(x))
