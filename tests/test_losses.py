"""Losses against hand-computed values on tiny tensors, including the per-pixel weighting."""

import math

import pytest
import torch

from build import build_loss
from config import load_config
from models.losses import (
    CODLoss,
    boundary_band,
    boundary_weight,
    dice_loss,
    edge_loss,
    weighted_bce,
    weighted_iou,
)

LOG2 = math.log(2)


def t(values):
    """[[...], ...] -> [1, 1, H, W] float32."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


def test_boundary_weight_default_kernel_by_hand():
    # 31x31 mean with zero padding over a 2x2 mask with one foreground pixel is 1/961 everywhere.
    w = boundary_weight(t([[1.0, 0.0], [0.0, 0.0]]))
    mean = 1 / 961
    assert w[0, 0, 0, 0].item() == pytest.approx(1 + 5 * (1 - mean))
    assert w[0, 0, 1, 1].item() == pytest.approx(1 + 5 * mean)


def test_weighted_bce_by_hand_and_weighting_matters():
    logits, mask = t([[0.0, 2.0]]), t([[1.0, 0.0]])
    bce = [LOG2, math.log(1 + math.e**2)]  # -log(sigmoid(0)), -log(1 - sigmoid(2))
    weighted = weighted_bce(logits, mask, t([[1.0, 3.0]])).item()
    assert weighted == pytest.approx((bce[0] + 3 * bce[1]) / 4, rel=1e-6)
    plain = weighted_bce(logits, mask, t([[1.0, 1.0]])).item()
    assert plain == pytest.approx(sum(bce) / 2, rel=1e-6)
    assert abs(weighted - plain) > 0.3


def test_weighted_iou_by_hand_and_weighting_matters():
    logits, mask = t([[0.0, 0.0]]), t([[1.0, 0.0]])  # p = 0.5, 0.5
    # I = 1*0.5*1 = 0.5; U = 1*(0.5+1) + 3*(0.5+0) = 3 -> 1 - 1.5 / 3.5
    assert weighted_iou(logits, mask, t([[1.0, 3.0]])).item() == pytest.approx(1 - 1.5 / 3.5, rel=1e-6)
    # unweighted: U = 2 -> 1 - 1.5 / 2.5
    assert weighted_iou(logits, mask, t([[1.0, 1.0]])).item() == pytest.approx(1 - 1.5 / 2.5, rel=1e-6)


def test_structure_loss_weighting_changes_the_value_on_a_real_mask():
    # A wrong prediction at the boundary costs more than the same error far from it.
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    logits = (mask * 2 - 1) * 3
    logits[..., 16, 32] = -3.0  # error on the boundary
    w = boundary_weight(mask)
    # on the edge the 31x31 window holds 16 object rows of 31; in the middle of the object all of it
    assert w[0, 0, 16, 32].item() == pytest.approx(1 + 5 * 15 / 31) and w[0, 0, 32, 32].item() == 1.0
    ones = torch.ones_like(mask)
    assert weighted_bce(logits, mask, w).item() != pytest.approx(weighted_bce(logits, mask, ones).item(), rel=1e-3)
    assert weighted_iou(logits, mask, w).item() != pytest.approx(weighted_iou(logits, mask, ones).item(), rel=1e-3)


def test_dice_by_hand():
    # p = 0.5, 0.5; I = 0.5; sum(p) + sum(m) = 2 -> 1 - (2*0.5 + 1) / (2 + 1)
    assert dice_loss(t([[0.0, 0.0]]), t([[1.0, 0.0]])).item() == pytest.approx(1 / 3, rel=1e-6)


def test_boundary_band_and_edge_loss_by_hand():
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 1:5, 1:5] = 1  # a 4x4 square
    band = boundary_band(mask, width=1)
    inner = torch.zeros_like(mask, dtype=torch.bool)
    inner[..., 2:4, 2:4] = True
    assert band[inner].sum() == 0 and band[~inner].eq(1).all()  # 32 band pixels, only the 2x2 core excluded
    assert edge_loss(torch.zeros_like(mask), mask, width=1).item() == pytest.approx(LOG2, rel=1e-6)
    wrong_core = torch.where(inner, torch.full_like(mask, -10.0), torch.zeros_like(mask))
    assert edge_loss(wrong_core, mask, width=1).item() == pytest.approx(LOG2, rel=1e-6)  # outside the band: ignored
    assert edge_loss(torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 6, 6)).item() == 0.0  # no boundary, no loss


def test_per_image_mean_does_not_depend_on_batch_composition():
    a, b = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    ma, mb = (torch.rand(1, 1, 8, 8) > 0.5).float(), (torch.rand(1, 1, 8, 8) > 0.5).float()
    both = dice_loss(torch.cat([a, b]), torch.cat([ma, mb]))
    assert both.item() == pytest.approx((dice_loss(a, ma) + dice_loss(b, mb)).item() / 2, rel=1e-6)


def test_cod_loss_combines_terms_and_side_outputs():
    torch.manual_seed(0)
    mask = (torch.rand(2, 1, 12, 12) > 0.5).float()
    side, final = torch.randn(2, 1, 12, 12), torch.randn(2, 1, 12, 12)
    loss = CODLoss(weights={"bce": 1.0, "iou": 2.0, "dice": 0.5, "edge": 0.25}, side=0.4)
    total, terms = loss([side, final], mask)
    w = boundary_weight(mask)

    def by_hand(o):
        return (
            weighted_bce(o, mask, w)
            + 2 * weighted_iou(o, mask, w)
            + 0.5 * dice_loss(o, mask)
            + 0.25 * edge_loss(o, mask)
        )

    assert set(terms) == {"bce", "iou", "dice", "edge", "side"}
    assert terms["iou"].item() == pytest.approx(2 * weighted_iou(final, mask, w).item(), rel=1e-6)
    assert terms["side"].item() == pytest.approx(0.4 * by_hand(side).item(), rel=1e-5)
    assert total.item() == pytest.approx((by_hand(final) + 0.4 * by_hand(side)).item(), rel=1e-5)
    # zero-weight terms are neither computed nor reported; side=0 ignores the side outputs
    total0, terms0 = CODLoss(weights={"bce": 1.0}, side=0.0)([side, final], mask)
    assert set(terms0) == {"bce"} and total0.item() == pytest.approx(weighted_bce(final, mask, w).item(), rel=1e-6)


def test_cod_loss_is_float32_under_bf16_autocast():
    torch.manual_seed(0)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    logits = torch.randn(2, 1, 16, 16).bfloat16().requires_grad_()
    loss = CODLoss(weights={"bce": 1.0, "iou": 1.0, "dice": 1.0, "edge": 1.0})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms = loss([logits, logits], mask)
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
    reference, _ = loss([logits.float(), logits.float()], mask)
    assert total.item() == pytest.approx(reference.item(), rel=1e-6)
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_cod_loss_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="shape"):
        CODLoss()([torch.zeros(1, 1, 8, 8)], torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="every loss weight is 0"):
        CODLoss(weights={"bce": 0, "iou": 0})
    with pytest.raises(ValueError, match="the terms are bce, iou"):
        CODLoss(weights={"focal": 1.0})


def test_the_schema_names_exactly_the_loss_terms():
    from config import LossTerm
    from models.losses import TERMS

    assert list(TERMS) == list(LossTerm)


def test_build_loss_reads_the_loss_section():
    loss = build_loss(load_config(None, ["loss.dice=0.5", "loss.side=0.25"]))
    assert loss.weights["dice"] == 0.5 and loss.side == 0.25
