"""Test-time augmentation: horizontal flip and several input scales, averaged in probability space.

:class:`TestTimeAugmentation` wraps a trained model and has its interface: ``forward(x)`` returns a
list of logits whose last entry is the prediction, here the logit of the averaged probability.
Every prediction path (``engine.predict.forward_probs`` applies a sigmoid to the last output)
therefore gets the averaged map unchanged, in test.py and in one's own code alike::

    model = TestTimeAugmentation(model, patch_size=16, hflip=True, scales=(0.75, 1.0, 1.25))

Averaging probabilities rather than logits keeps one confident view from outvoting the others,
and is what the COD papers that report TTA do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Keeps logit(p) finite; 1e-6 is below half a grey level of the 8-bit maps written from p.
_EPS = 1e-6


def scaled_size(size: int, scale: float, patch_size: int) -> int:
    """``size * scale`` rounded to the nearest multiple of the patch (at least one patch)."""
    return max(patch_size, round(size * scale / patch_size) * patch_size)


def describe(hflip: bool, scales: Sequence[float]) -> str:
    """A short, file-name-safe name for run names and folders, e.g. ``tta-hflip-x0.75-x1-x1.25``;
    "" when TTA is off."""
    parts = (["hflip"] if hflip else []) + [f"x{s:g}" for s in scales if len(scales) > 1 or s != 1]
    return "-".join(["tta", *parts]) if parts else ""


class TestTimeAugmentation(nn.Module):
    """Runs ``model`` on every (scale, flip) view of the input and averages the probabilities.

    Args:
        model: ``x [B, 3, H, W] -> list of logits [B, 1, H, W]``, final prediction last.
        patch_size: each scaled side is rounded to a multiple of it (the encoder's patch).
        hflip: add the horizontally mirrored view of every scale (mirrored back before averaging).
        scales: input scale factors; ``(1.0,)`` is the plain input.

    ``forward(x [B, 3, H, W]) -> [logit of the mean probability, [B, 1, H, W]]``.
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, model: nn.Module, patch_size: int, hflip: bool = True, scales: Sequence[float] = (1.0,)) -> None:
        super().__init__()
        if not scales or any(s <= 0 for s in scales):
            raise ValueError(f"scales must be positive factors, got {list(scales)}")
        self.model, self.patch_size, self.hflip, self.scales = model, patch_size, hflip, tuple(scales)

    @property
    def name(self) -> str:
        return describe(self.hflip, self.scales)

    def forward(self, x: Tensor) -> list[Tensor]:
        H, W = x.shape[-2:]
        total, views = torch.zeros(x.shape[0], 1, H, W, device=x.device), 0
        for scale in self.scales:
            size = (scaled_size(H, scale, self.patch_size), scaled_size(W, scale, self.patch_size))
            xs = x
            if size != (H, W):
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < H)
            batch = torch.cat([xs, xs.flip(-1)]) if self.hflip else xs  # one forward for both views
            prob = torch.sigmoid(self.model(batch)[-1].float())
            if self.hflip:
                plain, mirrored = prob.chunk(2)
                prob = torch.stack([plain, mirrored.flip(-1)]).sum(0)
            if prob.shape[-2:] != (H, W):
                prob = F.interpolate(prob, size=(H, W), mode="bilinear", align_corners=False)
            total += prob
            views += 2 if self.hflip else 1
        return [torch.logit(total / views, eps=_EPS)]


def for_test(model: nn.Module, cfg) -> tuple[nn.Module, str]:
    """``eval.tta`` of a config -> (``model`` wrapped in test-time augmentation, its name), or
    (``model``, "") when off: what test.py predicts with."""
    t = cfg.eval.tta
    if not t.hflip and not t.scales:
        return model, ""
    patch, scales = model.encoder.patch_size, list(t.scales) or [1.0]
    tta = TestTimeAugmentation(model, patch, hflip=t.hflip, scales=scales)
    sizes = sorted({scaled_size(int(cfg.data.image_size), s, patch) for s in scales})
    mirrored = " and their mirror images" if t.hflip else ""
    log.info("test-time augmentation %s: input sides %s%s, probabilities averaged", tta.name, sizes, mirrored)
    return tta, tta.name
