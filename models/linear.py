"""The linear decoder: the DINOv3 paper's linear-probe baseline for dense prediction.

Concatenated encoder maps -> normalisation -> one 1x1 convolution -> bilinear upsampling. It has
no spatial context of its own, so it measures what the (frozen) features alone can separate;
every COD paper built on a foundation model reports this ablation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.blocks import norm_layer, resize_to


class LinearDecoder(nn.Module):
    """Linear probe on the concatenated pyramid.

    Args:
        in_channels: width of every level (an int) or one width per level (``encoder.out_channels``).
        num_levels: number of maps ``forward`` receives.
        norm: ``"bn"`` (BatchNorm, as in the DINOv3 linear probe) or ``"gn"``.
        dropout: channel dropout before the classifier (regularises the wide 1x1 conv).

    ``forward(feats: list of [B, C_i, H_i, W_i], size=(H, W)) -> [logits [B, 1, H, W]]``: every
    level is resized to the largest map (the stride-16 patch grid with a ``simple`` encoder).
    """

    def __init__(
        self, in_channels: int | Sequence[int] = 768, num_levels: int = 4, norm: str = "bn", dropout: float = 0.1
    ) -> None:
        super().__init__()
        widths = [in_channels] * num_levels if isinstance(in_channels, int) else list(in_channels)
        self.num_levels = len(widths)
        total = sum(widths)
        self.norm = norm_layer(norm, total)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(total, 1, 1)

    def forward(self, feats: Sequence[Tensor], size: tuple[int, int]) -> list[Tensor]:
        if len(feats) != self.num_levels:
            raise ValueError(f"LinearDecoder expects {self.num_levels} feature maps, got {len(feats)}")
        largest = max(feats, key=lambda f: f.shape[-2] * f.shape[-1])
        x = torch.cat([resize_to(f, largest) for f in feats], dim=1)
        return [resize_to(self.classifier(self.dropout(self.norm(x))), size)]
