"""COD losses: small pure functions on logits [B, 1, H, W] and masks [B, 1, H, W] in {0, 1}, and
``CODLoss``, their weighted sum over the deep-supervision outputs.

Every function returns the mean over the batch of a per-image value (so the loss does not depend
on the batch size) and expects float32 inputs; ``CODLoss`` casts and disables autocast, because
sums over 147k pixels and log-sigmoids lose too much in bfloat16.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def boundary_weight(mask: Tensor, kernel: int = 31, strength: float = 5.0) -> Tensor:
    """SINet-V2's per-pixel weight ``1 + strength * |avgpool_k(mask) - mask|`` [B, 1, H, W]:
    up to 1 + strength near the object boundary, 1 far from it (zero padding, as in SINet-V2)."""
    # A k x k box mean with zero padding is a 1 x k mean of a k x 1 mean: 2k adds a pixel, not k^2.
    half = kernel // 2
    local_mean = F.avg_pool2d(F.avg_pool2d(mask, (1, kernel), 1, (0, half)), (kernel, 1), 1, (half, 0))
    return 1 + strength * (local_mean - mask).abs()


def weighted_bce(logits: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
    """sum(w * BCE) / sum(w) per image, averaged over the batch -> scalar.

    ``reduction="none"`` is essential: the widely copied version passes ``reduce='none'``, which
    PyTorch reads as a truthy legacy flag and returns the already averaged scalar, so the
    weighting silently does nothing.
    """
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    return ((weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))).mean()


def weighted_iou(logits: Tensor, mask: Tensor, weight: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft IoU loss ``1 - (I + s) / (U - I + s)`` with I = sum(w p m), U = sum(w (p + m)) per image."""
    prob = torch.sigmoid(logits)
    inter = (weight * prob * mask).sum(dim=(2, 3))
    union = (weight * (prob + mask)).sum(dim=(2, 3))
    return (1 - (inter + smooth) / (union - inter + smooth)).mean()


def dice_loss(logits: Tensor, mask: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss ``1 - (2 sum(p m) + s) / (sum(p) + sum(m) + s)`` per image."""
    prob = torch.sigmoid(logits)
    inter = (prob * mask).sum(dim=(2, 3))
    total = prob.sum(dim=(2, 3)) + mask.sum(dim=(2, 3))
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


def boundary_band(mask: Tensor, width: int = 2) -> Tensor:
    """Pixels within ``width`` of the object boundary: dilation minus erosion of the mask, [B, 1, H, W] in {0, 1}."""
    k = 2 * width + 1
    dilated = F.max_pool2d(mask, k, stride=1, padding=width)
    eroded = -F.max_pool2d(-mask, k, stride=1, padding=width)
    return dilated - eroded


def edge_loss(logits: Tensor, mask: Tensor, width: int = 2) -> Tensor:
    """BCE averaged over the boundary band only (0 for an image without a boundary)."""
    band = boundary_band(mask, width)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    return ((band * bce).sum(dim=(2, 3)) / band.sum(dim=(2, 3)).clamp_min(1)).mean()


class CODLoss(nn.Module):
    """Weighted sum of the terms above on every output, with deep supervision.

    ``forward(outputs: list of logits [B, 1, H, W] (final last), mask [B, 1, H, W])`` returns
    ``(total, terms)``: ``total = L(final) + side * sum(L(o) for o in outputs[:-1])`` with
    ``L = bce * wBCE + iou * wIoU + dice * Dice + edge * Edge``, and ``terms`` holding each
    weighted term of the final output plus ``"side"`` (the weighted side sum), all float32
    tensors that still carry gradients (detach them for logging).
    """

    def __init__(
        self,
        bce: float = 1.0,
        iou: float = 1.0,
        dice: float = 0.0,
        edge: float = 0.0,
        side: float = 0.5,
        edge_width: int = 2,
    ) -> None:
        super().__init__()
        self.weights = {"bce": bce, "iou": iou, "dice": dice, "edge": edge}
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("every loss weight is 0: set at least one of loss.bce, loss.iou, loss.dice, loss.edge > 0")
        self.side = side
        self.edge_width = edge_width

    def _terms(self, logits: Tensor, mask: Tensor, weight: Tensor) -> dict[str, Tensor]:
        w = self.weights
        out = {}
        if w["bce"]:
            out["bce"] = w["bce"] * weighted_bce(logits, mask, weight)
        if w["iou"]:
            out["iou"] = w["iou"] * weighted_iou(logits, mask, weight)
        if w["dice"]:
            out["dice"] = w["dice"] * dice_loss(logits, mask)
        if w["edge"]:
            out["edge"] = w["edge"] * edge_loss(logits, mask, self.edge_width)
        return out

    def forward(self, outputs: Sequence[Tensor], mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(outputs, Tensor):
            outputs = [outputs]
        for i, o in enumerate(outputs):
            if o.shape != mask.shape:
                raise ValueError(
                    f"output {i} has shape {tuple(o.shape)} but the mask has {tuple(mask.shape)}; "
                    "the model must return logits [B, 1, H, W] at the mask's size"
                )
        with torch.autocast(device_type=mask.device.type, enabled=False):
            mask = mask.float()
            weight = boundary_weight(mask)
            terms = self._terms(outputs[-1].float(), mask, weight)
            total = sum(terms.values())
            if len(outputs) > 1 and self.side > 0:
                side = sum(sum(self._terms(o.float(), mask, weight).values()) for o in outputs[:-1])
                terms["side"] = self.side * side
                total = total + terms["side"]
        return total, terms
