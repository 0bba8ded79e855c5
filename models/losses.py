"""COD losses: small pure functions on logits [B, 1, H, W] and masks [B, 1, H, W] in [0, 1]
(binary, or soft where the data keeps grey levels), and ``CODLoss``, their weighted sum over the
deep-supervision outputs.

Every function returns the mean over the batch of a per-image value (so the loss does not depend
on the batch size), unless ``pooled=True`` (or the Sobel term's ``peak="batch"``) asks for the
published E2Net's quantities over the whole batch, and expects float32 inputs; ``CODLoss`` casts
and disables autocast, because sums over 147k pixels and log-sigmoids lose too much in bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _sums(x: Tensor, pooled: bool) -> Tensor:
    """Per-image sums [B, 1] (``pooled``: one sum over the whole batch, [1])."""
    return x.sum().unsqueeze(0) if pooled else x.sum(dim=(2, 3))


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


def weighted_iou(
    logits: Tensor, mask: Tensor, weight: Tensor | None = None, smooth: float = 1.0, pooled: bool = False
) -> Tensor:
    """Soft IoU loss ``1 - (I + s) / (U - I + s)`` with I = sum(w p m), U = sum(w (p + m)) per image
    (``weight=None``: w = 1; ``pooled``: the sums run over the whole batch)."""
    prob = torch.sigmoid(logits)
    w = 1.0 if weight is None else weight
    inter = _sums(w * prob * mask, pooled)
    union = _sums(w * (prob + mask), pooled)
    return (1 - (inter + smooth) / (union - inter + smooth)).mean()


def dice_loss(logits: Tensor, mask: Tensor, smooth: float = 1.0, pooled: bool = False) -> Tensor:
    """Soft Dice loss ``1 - (2 sum(p m) + s) / (sum(p) + sum(m) + s)`` per image (``pooled``: over the batch)."""
    prob = torch.sigmoid(logits)
    inter = _sums(prob * mask, pooled)
    total = _sums(prob, pooled) + _sums(mask, pooled)
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


SOBEL_PADDING = {"replicate": "replicate", "zeros": "constant"}  # config.SobelBorder -> F.pad mode


def sobel_magnitude(x: Tensor, border: str = "replicate", eps: float = 1e-8) -> Tensor:
    """``sqrt(gx^2 + gy^2 + eps)`` [B, 1, H, W] of x [B, 1, H, W], with the plain 3x3 Sobel kernels
    ([-1, 0, 1] x [1, 2, 1], unnormalised, as the published E2Net) and the border ``"replicate"``d
    or ``"zeros"``-padded."""
    kernels = kornia.filters.get_sobel_kernel2d().to(x)[:, None]  # [2, 1, 3, 3]: d/dx, d/dy
    grads = F.conv2d(F.pad(x, (1, 1, 1, 1), mode=SOBEL_PADDING[border]), kernels)
    return torch.sqrt(grads.square().sum(dim=1, keepdim=True) + eps)


def sobel_edges(x: Tensor, peak: str = "image", border: str = "replicate", eps: float = 1e-8) -> Tensor:
    """Sobel magnitude [B, 1, H, W] (:func:`sobel_magnitude`) divided by its maximum over each
    image (``peak="image"``) or over the whole batch (``"batch"``, as published); a maximum
    <= 1e-6 leaves the map as it is."""
    mag = sobel_magnitude(x, border, eps)
    top = mag.amax(dim=(1, 2, 3), keepdim=True) if peak == "image" else mag.amax()
    return torch.where(top > 1e-6, mag / top.clamp_min(1e-6), mag)


def sobel_edge_loss(
    logits: Tensor, mask: Tensor, threshold: float = 0.1, peak: str = "image", border: str = "replicate"
) -> Tensor:
    """The published E2Net's edge term: BCE between the Sobel edges of the probabilities and the
    mask's Sobel edges binarised at ``threshold`` of their maximum, averaged over every pixel.

    ``peak="image"`` scales each image by its own maxima, so its loss does not depend on its
    batch-mates; ``"batch"`` takes them over the batch, as published. ``border``: ``"replicate"``
    gives an object touching the image border no edge along the frame; ``"zeros"`` (published)
    does, on mask and prediction alike. The prediction's magnitude has the published epsilon
    (1e-8, which keeps the square root's gradient finite); the mask's has none, so an empty mask
    has no edge (published: edges everywhere, when the whole batch is empty).
    """
    pred_edge = sobel_edges(torch.sigmoid(logits), peak, border)
    mask_edge = (sobel_edges(mask, peak, border, eps=0.0) > threshold).float()
    bce = F.binary_cross_entropy(pred_edge.clamp(0, 1), mask_edge, reduction="none")
    return bce.mean(dim=(1, 2, 3)).mean()


# The loss terms by the name the config gives them (loss.<name> weights, loss.coarse_terms).
TERMS: dict[str, Callable[..., Tensor]] = {
    "bce": lambda x, m, bce_weight, **_: weighted_bce(x, m, torch.ones_like(m) if bce_weight is None else bce_weight),
    "iou": lambda x, m, weight, pooled, smooth, **_: weighted_iou(x, m, weight, smooth, pooled=pooled),
    "dice": lambda x, m, pooled, smooth, **_: dice_loss(x, m, smooth, pooled=pooled),
    "edge": lambda x, m, edge_width, **_: edge_loss(x, m, edge_width),
    "sobel": lambda x, m, sobel_peak, sobel_border, **_: sobel_edge_loss(x, m, peak=sobel_peak, border=sobel_border),
}
NO_TERM = f"every loss weight is 0: give at least one of {', '.join(TERMS)} a weight > 0"


def weighted_terms(weights: Mapping[str, float]) -> dict[str, float]:
    """The terms that count: those with a weight other than 0 (a loss needs at least one, :data:`NO_TERM`)."""
    return {t: float(w) for t, w in weights.items() if w}


class CODLoss(nn.Module):
    """Weighted sum of the terms above on every output, with deep supervision.

    ``forward(outputs: list of logits [B, 1, H, W] (coarse map first, final last), mask [B, 1, H, W])``
    returns ``(total, terms)``: ``total = L(final) + side * sum(L(o) for o in sides) [+ coarse * C(outputs[0])]``
    with ``L = sum(weights[t] * TERMS[t])`` (e.g. ``{"bce": 1, "iou": 1}``). Without
    ``coarse_terms`` the sides are every output but the last; with them the coarse map (the first
    output) is scored by ``C`` = the unweighted sum of those terms instead, and the sides are the
    outputs between the first and the last. ``weighted``: BCE and IoU use SINet-V2's boundary
    weight (``bce_weighted=False``: IoU only, BCE the plain mean, as SINet-V2's own code computes
    it, see :func:`weighted_bce`); ``pooled``: Dice and IoU sum over the batch; ``smooth``: their additive smoothing
    (the published E2Net's is 1e-5); ``sobel_peak`` and ``sobel_border``: see
    :func:`sobel_edge_loss`. ``terms`` holds each weighted term of the final output plus
    ``"side"`` and ``"coarse"`` when present, all float32 tensors that still carry gradients
    (detach them for logging).
    """

    def __init__(
        self,
        *,
        weights: Mapping[str, float] = MappingProxyType({"bce": 1.0, "iou": 1.0}),
        side: float = 0.5,
        weighted: bool = True,
        bce_weighted: bool = True,
        pooled: bool = False,
        coarse_terms: Sequence[str] = (),
        coarse: float = 0.2,
        edge_width: int = 2,
        smooth: float = 1.0,
        sobel_peak: str = "image",
        sobel_border: str = "replicate",
    ) -> None:
        super().__init__()
        unknown = [t for t in (*weights, *coarse_terms) if t not in TERMS]
        if unknown:
            raise ValueError(f"loss terms {unknown}: the terms are {', '.join(TERMS)}")
        self.weights = weighted_terms(weights)
        if not self.weights:
            raise ValueError(NO_TERM)
        self.coarse_weights = dict.fromkeys(coarse_terms, coarse)
        self.side, self.weighted, self.pooled, self.edge_width = side, weighted, pooled, edge_width
        self.bce_weighted = bce_weighted
        self._args = {"smooth": smooth, "sobel_peak": sobel_peak, "sobel_border": sobel_border}

    def _terms(self, weights: dict[str, float], logits: Tensor, mask: Tensor, weight: Tensor | None) -> dict:
        bce_weight = weight if self.bce_weighted else None
        args = {
            "weight": weight,
            "bce_weight": bce_weight,
            "pooled": self.pooled,
            "edge_width": self.edge_width,
            **self._args,
        }
        return {name: w * TERMS[name](logits, mask, **args) for name, w in weights.items() if w}

    def forward(self, outputs: Sequence[Tensor], mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(outputs, Tensor):
            outputs = [outputs]
        for i, o in enumerate(outputs):
            if o.shape != mask.shape:
                raise ValueError(
                    f"output {i} has shape {tuple(o.shape)} but the mask has {tuple(mask.shape)}; "
                    "the model must return logits [B, 1, H, W] at the mask's size"
                )
        if self.coarse_weights and len(outputs) < 2:
            raise ValueError("loss.coarse_terms needs a coarse map before the final one, but the model returns one map")
        with torch.autocast(device_type=mask.device.type, enabled=False):
            mask = mask.float()
            weight = boundary_weight(mask) if self.weighted else None
            terms = self._terms(self.weights, outputs[-1].float(), mask, weight)
            total = sum(terms.values())
            sides = outputs[1:-1] if self.coarse_weights else outputs[:-1]
            if sides and self.side > 0:
                side = sum(sum(self._terms(self.weights, o.float(), mask, weight).values()) for o in sides)
                terms["side"] = self.side * side
                total = total + terms["side"]
            if self.coarse_weights:
                coarse = self._terms(self.coarse_weights, outputs[0].float(), mask, weight)
                if coarse:
                    terms["coarse"] = sum(coarse.values())
                    total = total + terms["coarse"]
        return total, terms
