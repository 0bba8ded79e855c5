"""Attention across a clip's frames: the temporal module of a video model, and the loss on clips.

A clip of ``T`` frames goes through the encoder, CAEM and the decoder as ``T`` images (the batch
``[B * T, ...]``, clip-major); between CAEM and the decoder, :class:`TemporalAttention` lets every
token of the coarsest pyramid levels attend to the tokens of all ``T`` frames of its clip at that
level, so that an object's motion against its background can decide what the single frame cannot.
Each level's output projection starts at zero: the module starts as the identity, and a clip model
initialised from an image model (``train.init_from``) predicts exactly what that model did.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from cod_benchmarks import NO_MASK, clip_anchor

from .losses import CODLoss


class ClipAttention(nn.Module):
    """One level: ``x`` [B * T, C, h, w] -> ``x`` + attention over the clip's ``T * h * w`` tokens.

    A depth-wise 3x3 convolution adds each token's neighbourhood (its position) to the queries and keys.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)  # the identity at start: the residual alone
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: Tensor, clip: int) -> Tensor:
        n, c, h, w = x.shape
        b = n // clip
        tokens = (x + self.pos(x)).reshape(b, clip, c, h * w).transpose(2, 3).reshape(b, clip * h * w, c)
        tokens = self.norm(tokens)
        mixed, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        mixed = mixed.reshape(b, clip, h * w, c).transpose(2, 3).reshape(n, c, h, w)
        return x + mixed.to(x.dtype)


class TemporalAttention(nn.Module):
    """:class:`ClipAttention` on the ``levels`` coarsest of the pyramid's maps.

    Args:
        channels: width of each pyramid level, finest first.
        levels: how many of the coarsest levels get attention (1 .. len(channels)).
        heads: attention heads (divides each of those widths).

    ``forward(maps, clip)``: ``maps`` as CAEM returns them (list of [B * T, C_l, h_l, w_l], finest
    first, the ``T = clip`` frames of each clip consecutive) -> the same list, the coarsest levels mixed.
    """

    def __init__(self, channels: Sequence[int], levels: int, heads: int) -> None:
        super().__init__()
        if not 1 <= levels <= len(channels):
            raise ValueError(f"levels must be in 1..{len(channels)}, got {levels}")
        self.first = len(channels) - levels
        self.blocks = nn.ModuleList(ClipAttention(c, heads) for c in channels[self.first :])

    def forward(self, maps: list[Tensor], clip: int) -> list[Tensor]:
        if maps[0].shape[0] % clip:
            raise ValueError(f"a batch of {maps[0].shape[0]} frames does not hold whole clips of {clip}")
        mixed = [block(m, clip) for block, m in zip(self.blocks, maps[self.first :])]
        return [*maps[: self.first], *mixed]


class ClipLoss(nn.Module):
    """``loss`` on the frames of clips that have a mask.

    ``forward(outputs, masks)``: ``outputs`` as the model returns them for clips (list of
    [B * T, 1, H, W]); ``masks`` [B, T, 1, H, W], a frame without annotation filled with
    :data:`NO_MASK`. Image batches (``masks`` [B, 1, H, W]) pass through unchanged.
    """

    def __init__(self, loss: CODLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: Sequence[Tensor], masks: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if masks.dim() == 4:
            return self.loss(outputs, masks)
        masks = masks.flatten(0, 1)
        keep = masks[:, 0, 0, 0] != NO_MASK
        if bool(keep.all()):  # no indexing copy when every frame is annotated
            return self.loss(outputs, masks)
        return self.loss([o[keep] for o in outputs], masks[keep])


def clip_frames(x: Tensor) -> tuple[Tensor, int]:
    """A model input [B, T, 3, H, W] (clips) or [B, 3, H, W] (images, clips of one) -> (frames [B * T, 3, H, W], T)."""
    if x.dim() == 5:
        return x.flatten(0, 1), x.shape[1]
    return x, 1


def anchors(frames: Tensor, clip: int) -> Tensor:
    """The anchor (centre) frame of each clip: [B * T, ...] -> [B, ...] (see ``datasets.video.clip_indices``)."""
    return frames.unflatten(0, (-1, clip))[:, clip_anchor(clip)]


class AnchorFrames(nn.Module):
    """``model``'s outputs on clips cut to each clip's anchor frame: ``x`` [B, T, 3, H, W] -> logits
    [B, 1, *size] (images pass through), so that clip predictions score and save as image ones."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> list[Tensor]:
        outputs = self.model(x, size)
        return [anchors(o, x.shape[1]) for o in outputs] if x.dim() == 5 else outputs
