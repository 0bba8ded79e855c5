"""E2Net: DINOv3 encoder -> CAEM -> decoder, and its trainable-only state dict."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .temporal import clip_frames


class E2Net(nn.Module):
    """Camouflaged-object segmenter.

    Args:
        encoder: image [B, 3, H, W] in [0, 1] -> list of 4 maps (e.g. ``dinov3_encoder.PyramidEncoder``); it
            keeps its frozen part in eval mode and out of autograd itself.
        caem: list of 4 maps -> list of 4 maps, or None (the linear decoder reads the encoder directly).
        decoder: ``(maps, size) -> list of logits [B, 1, *size]``, final last.
        channels_last: keep the decoder's weights and activations in NHWC, which tensor-core
            convolutions prefer.
        compile: ``torch.compile`` CAEM and the decoder (in place, so state-dict keys do not change).
        temporal: ``(maps, clip) -> maps`` across each clip's frames, after CAEM
            (``models.temporal.TemporalAttention``), or None (an image model).

    ``forward(x [B, 3, H, W] in [0, 1], size=None) -> list of logits [B, 1, *size]`` (``size``
    defaults to the input's (H, W)), final prediction last; the same list in training and
    evaluation mode. Clips ``x`` [B, T, 3, H, W] give logits [B * T, 1, *size], each clip's frames
    in order; an image model treats them as ``B * T`` images.
    """

    def __init__(
        self,
        encoder: nn.Module,
        caem: nn.Module | None,
        decoder: nn.Module,
        *,
        channels_last: bool = False,
        compile: bool = False,
        temporal: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.caem = caem
        self.temporal = temporal
        self.decoder = decoder
        self.channels_last = channels_last
        if channels_last:
            for m in (caem, decoder):
                if m is not None:
                    m.to(memory_format=torch.channels_last)
        if compile:
            # One static graph per input size: multi-scale training uses a few fixed sizes, and
            # dynamic shapes hit an inductor error here (torch 2.14, "cannot determine truth
            # value of Relational" in get_fill_order).
            for m in (caem, decoder):
                if m is not None:
                    m.compile(dynamic=False)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> list[Tensor]:
        x, clip = clip_frames(x)
        feats = self.encoder(x)
        if self.channels_last:
            feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
        if self.caem is not None:
            feats = self.caem(feats)
        if self.temporal is not None:
            feats = self.temporal(feats, clip)
        return self.decoder(feats, tuple(size) if size is not None else tuple(x.shape[-2:]))

    # -- what a checkpoint holds: everything but the frozen encoder weights (engine.checkpoint loads it) --
    def frozen_keys(self) -> set[str]:
        """State-dict keys of encoder parameters that do not train (loaded from the DINOv3 weights)."""
        return {f"encoder.{n}" for n, p in self.encoder.named_parameters() if not p.requires_grad}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The state dict without frozen encoder weights: pyramid, fine-tuned blocks, CAEM, decoder, norm stats."""
        frozen = self.frozen_keys()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}
