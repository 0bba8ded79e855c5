"""The published E2Net as a configuration: LFSM / CFZM / CCM shapes, CAEM alignment, the
interpolated pyramid, the reference's loss terms by hand, the plateau schedule, the side crop,
option combinations, and configs/e2net_reference.yaml trained, resumed and scored end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from build import build_model
from caem import CAEM
from config import ConfigError, load_config
from config_checks import check_keys
from datasets.transforms import box_matrix, side_crop_box
from dinov3_encoder import build_dinov3_encoder
from engine.optim import build_optimizer, build_plateau_scheduler, param_groups
from helpers import load_test_cli, round_trips, run_train
from models.losses import CODLoss, dice_loss, sobel_edge_loss, weighted_iou
from models.reference import CCM, CFZM, LFSM, E2NetRefDecoder

REFERENCE = "configs/e2net_reference.yaml"


def maps(channels: int, h: int, w: int, strides, batch=2) -> list[torch.Tensor]:
    """Random maps [B, channels, ceil(h/s), ceil(w/s)] for each stride."""
    return [torch.randn(batch, channels, -(-h // s), -(-w // s)) for s in strides]


# ------------------------------------------------------------------ modules on a non-square input
def test_lfsm_cfzm_ccm_shapes_on_a_non_square_input() -> None:
    torch.manual_seed(0)
    feats = maps(16, 12, 20, strides=[1, 2, 4, 8])  # finest 12x20, deepest 2x3
    coarse = LFSM(16, heads=4).eval()(feats[-1])
    assert coarse.shape == (2, 1, 2, 3)
    focused = CFZM(16, 4, norm="bn").eval()(feats, coarse)
    assert [f.shape for f in focused] == [f.shape for f in feats]
    final = CCM(16, 4, heads=4).eval()(focused)
    assert final.shape == (2, 1, 12 * 8, 20 * 8)  # three x2 stages from the finest level


@pytest.mark.parametrize("levels", [2, 3, 4, 5])
@pytest.mark.parametrize("align", ["own", "finest"])
def test_reference_decoder_wires_any_level_count_at_input_size(levels: int, align: str) -> None:
    torch.manual_seed(0)
    widths, strides = [8, 16, 24, 32, 40][:levels], [1, 2, 4, 8, 16][:levels]
    encoder_maps = [torch.randn(2, c, -(-24 // s), -(-40 // s)) for c, s in zip(widths, strides)]
    feats = CAEM(widths, out_channels=16, norm="bn", num_levels=levels, align=align, reduce_norm=False)(encoder_maps)
    if align == "finest":
        assert all(f.shape[-2:] == (24, 40) for f in feats)
    else:
        assert [f.shape[-2:] for f in feats] == [m.shape[-2:] for m in encoder_maps]
    decoder = E2NetRefDecoder(16, levels, heads=4)
    outs = decoder(feats, (48, 80))
    assert len(outs) == 2 and all(o.shape == (2, 1, 48, 80) for o in outs)
    outs[-1].mean().backward()  # every parameter on the path to the final map gets a gradient
    assert all(p.grad is not None for n, p in decoder.named_parameters() if not n.startswith("lfsm.predict"))
    with pytest.raises(ValueError, match="at least 2 levels"):
        CCM(16, 1)


def test_ccm_attention_is_plain_multi_head_attention_without_output_projection() -> None:
    torch.manual_seed(0)
    ccm = CCM(8, 2, heads=2)
    query, context = torch.randn(1, 8, 3, 5), torch.randn(1, 8, 3, 5)
    q, k, v = (proj(t).flatten(2).transpose(1, 2) for proj, t in ((ccm.q, query), (ccm.k, context), (ccm.v, context)))
    heads = [
        torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), dim=-1) @ v[..., s]
        for s in (slice(0, 4), slice(4, 8))
    ]
    expected = torch.cat(heads, dim=-1).transpose(1, 2).reshape(1, 8, 3, 5)
    torch.testing.assert_close(ccm.attend(query, context), expected, rtol=1e-5, atol=1e-5)


def test_caem_reduction_without_norm_is_a_plain_conv() -> None:
    caem = CAEM(8, out_channels=16, norm="bn", num_levels=4, reduce_norm=False)
    assert all(isinstance(r, torch.nn.Conv2d) and r.bias is not None for r in caem.reduce)
    with pytest.raises(ValueError, match="align"):
        CAEM(8, out_channels=16, align="coarsest")


def test_interpolate_pyramid_resizes_the_tapped_maps(tiny_dinov3) -> None:
    enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3), pyramid="interpolate")
    x = torch.rand(1, 3, 48, 80)  # 3x5 patches of 16 px
    with torch.no_grad():
        taps, out = enc.tapped_maps(x), enc(x)
    assert enc.out_channels == [64] * 4 and enc.strides == [4, 8, 16, 32]
    assert [tuple(o.shape[-2:]) for o in out] == [(12, 20), (6, 10), (3, 5), (2, 3)]
    torch.testing.assert_close(out[0], F.interpolate(taps[0], size=(12, 20), mode="bilinear", align_corners=False))
    torch.testing.assert_close(out[2], taps[2])
    assert not list(enc.pyramid.parameters())


# ------------------------------------------------------------------ losses by hand
def test_sobel_edge_loss_by_hand() -> None:
    # Every row of the mask is [1, 1, 0, 0]; of the logits [2, -2, -2, -2]. With the border
    # replicated there is no vertical gradient; the horizontal Sobel is 4 (m[j+1] - m[j-1]).
    mask = torch.tensor([[1.0, 1, 0, 0]] * 4)[None, None]
    logits = torch.tensor([[2.0, -2, -2, -2]] * 4)[None, None]
    s = 1 / (1 + math.exp(-2))
    g = 4 * (1 - 2 * s)  # prediction gradient at columns 0 and 1; 0 at columns 2 and 3
    floor = math.sqrt(1e-8)  # magnitude where the gradient is 0 (the epsilon under the square root)
    f = floor / math.sqrt(g * g + 1e-8)  # ... after scaling the maximum to 1
    # mask edges at columns 1 and 2; prediction edges [1, 1, f, f]; BCE's log is clamped at -100
    expected = (100 + 0 - math.log(f) - math.log(1 - f)) / 4
    assert sobel_edge_loss(logits, mask).item() == pytest.approx(expected, rel=1e-4)
    # per image: an image's value does not depend on its batch-mates
    other = torch.zeros_like(mask)
    batch = sobel_edge_loss(torch.cat([logits, 5 * logits]), torch.cat([mask, other]))
    assert batch.item() == pytest.approx((expected + sobel_edge_loss(5 * logits, other).item()) / 2, rel=1e-5)
    assert sobel_edge_loss(logits, other).item() > 0  # an empty mask has no edge, so any predicted edge costs


def test_pooled_dice_and_iou_by_hand() -> None:
    logits = torch.zeros(2, 1, 2, 2)  # p = 0.5 everywhere
    mask = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    # pooled: I = 2, sum(p) = 4, sum(m) = 4
    assert dice_loss(logits, mask, pooled=True).item() == pytest.approx(1 - 5 / 9)
    assert weighted_iou(logits, mask, pooled=True).item() == pytest.approx(1 - 3 / 7)
    # per image: (1 - 5/7) and (1 - 1/3)
    assert dice_loss(logits, mask).item() == pytest.approx((2 / 7 + 2 / 3) / 2)


def test_unweighted_bce_is_the_plain_mean() -> None:
    g = torch.Generator().manual_seed(0)
    logits, mask = torch.randn(2, 1, 8, 8, generator=g), (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    plain = F.binary_cross_entropy_with_logits(logits, mask)
    total, _ = CODLoss(weights={"bce": 1}, weighted=False)([logits], mask)
    assert total.item() == pytest.approx(plain.item(), rel=1e-6)
    weighted, _ = CODLoss(weights={"bce": 1}, weighted=True)([logits], mask)
    assert weighted.item() != pytest.approx(plain.item(), rel=1e-3)


def test_reference_loss_with_coarse_terms_by_hand() -> None:
    mask = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    final = torch.zeros(2, 1, 2, 2)  # p = 0.5
    coarse = torch.full((2, 1, 2, 2), 100.0)  # p = 1: BCE 0 on the object image, 100 on the empty one
    loss = CODLoss(
        weights={"dice": 2.5, "bce": 1, "iou": 1}, side=0, weighted=False, pooled=True, coarse_terms=["dice", "bce"]
    )
    total, terms = loss([coarse, final], mask)
    coarse_dice = 1 - (2 * 4 + 1) / (8 + 4 + 1)
    expected_coarse = 0.2 * (coarse_dice + 50)
    expected = 2.5 * 4 / 9 + math.log(2) + 4 / 7 + expected_coarse
    assert terms["coarse"].item() == pytest.approx(expected_coarse, rel=1e-5)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert set(terms) == {"dice", "bce", "iou", "coarse"}
    with pytest.raises(ValueError, match="coarse map"):
        loss([final], mask)


def test_build_loss_reads_the_reference_loss_section() -> None:
    loss = build_loss_from(REFERENCE)
    assert loss.weights == {"bce": 1.0, "iou": 1.0, "dice": 2.5, "sobel": 0.7}  # terms weighted 0 are dropped
    assert loss.coarse_weights == {"dice": 0.2, "bce": 0.2} and not loss.weighted and loss.pooled


def build_loss_from(path: str):
    from build import build_loss

    return build_loss(load_config(path))


# ------------------------------------------------------------------ recipe switches
def test_plateau_halves_the_lr_after_patience_and_round_trips() -> None:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1.0, weight_decay=0.0)
    sched = build_plateau_scheduler(opt, factor=0.5, patience=1, min_lr_ratio=0.3)
    lrs = []
    for loss in (1.0, 2.0, 2.0, 0.5, 2.0):
        sched.step(loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:3] == [1.0, 1.0, 0.5] and lrs[3:] == [0.5, 0.5]
    sched.step(2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.3)  # floored at min_lr_ratio * lr
    restored = build_plateau_scheduler(build_optimizer(model, lr=1.0, weight_decay=0.0), 0.5, 1, 0.3)
    restored.load_state_dict(sched.state_dict())
    assert restored.best == 0.5 and restored.num_bad_epochs == sched.num_bad_epochs


def test_decay_norms_puts_every_parameter_in_the_decayed_group() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert {g["name"] for g in param_groups(model, 0.1, 1.0)} == {"new/decay", "new/no_decay"}
    (group,) = param_groups(model, 0.1, 1.0, decay_norms=True)
    assert group["weight_decay"] == 0.1 and len(group["params"]) == 4


def test_side_crop_box_and_its_matrix() -> None:
    x0, y0, w, h = side_crop_box(100, 200, 0.125, np.random.default_rng(0))
    assert 0 <= x0 < 200 - w < 25 and 0 <= y0 < 100 - h < 12  # the box stays inside; cuts < 1/8
    m = box_matrix((20.0, 0.0, 170.0, 87.5), 32, 0.0, False)
    # the box's outer pixel edges (pixel centres at integers) land on the output's outer pixel edges
    corners = m @ np.array([[19.5, 189.5], [-0.5, 87.0], [1, 1]])
    np.testing.assert_allclose(corners, [[-0.5, 31.5], [-0.5, 31.5]], atol=1e-4)


# ------------------------------------------------------------------ bad combinations
@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["train.scheduler=plateau", "train.warmup_epochs=0", "data.val_fraction=0"], ["train.scheduler"]),
        (["train.scheduler=plateau"], ["train.warmup_epochs"]),
        (["model.encoder.simple=true", "model.encoder.pyramid=interpolate"], ["model.encoder.pyramid"]),
        (["model.decoder=linear", "model.caem_align=finest"], ["model.caem_align"]),
        (["model.decoder=linear", "loss.coarse_terms=[dice]"], ["loss.coarse_terms"]),
        (["model.decoder=e2net_reference"], ["model.decoder", "e2net_ref"]),
        (["train.best_metric=val_loss"], ["train.best_metric", "loss"]),
        (["loss.coarse_terms=[dice,dice]"], ["loss.coarse_terms"]),
        (["data.side_crop=1.0"], ["data.side_crop"]),
        (["model.encoder.pixel_mean=[120,110,100]"], ["model.encoder.pixel_mean"]),
        (["model.coarse_sigmoid=true"], ["model.coarse_sigmoid", "e2net_ref"]),
        (["data.val_augment=true"], ["train.best_metric", "loss"]),
        (["eval.resize_logits=true", "eval.tta.hflip=true"], ["eval.resize_logits"]),
        (["data.soft_masks=true", "data.augment_on=device"], ["data.augment_on"]),
        (["data.reduced_decode=false", "data.cache=true"], ["data.cache"]),
    ],
)
def test_bad_combinations_stop_before_building_naming_the_keys(overrides, keys) -> None:
    with pytest.raises(ConfigError) as err:
        check_keys(load_config(None, overrides))
    assert all(k in str(err.value) for k in keys) and "\n" not in str(err.value)


def test_reference_config_loads_and_builds(tiny_dinov3) -> None:
    cfg = load_config(REFERENCE, [f"model.encoder.pretrained_path={tiny_dinov3}", "model.channels=16"])
    model = build_model(cfg)
    assert type(model.decoder).__name__ == "E2NetRefDecoder" and model.caem.align == "finest"
    with torch.no_grad():
        outs = model.eval()(torch.rand(1, 3, 32, 48))
    assert [tuple(o.shape) for o in outs] == [(1, 1, 32, 48)] * 2


# ------------------------------------------------------------------ train.py end to end
@pytest.fixture(scope="module")
def reference_args(tmp_path_factory, tiny_dinov3_factory):
    from scripts.make_synthetic_cod import generate

    data = tmp_path_factory.mktemp("synth_ref")
    generate(data, n_train=12, n_test=3, size=48, seed=0)
    encoder = tiny_dinov3_factory(layers=4)
    return [
        "--config",
        REFERENCE,
        f"model.encoder.pretrained_path={encoder}",
        "model.encoder.layers=[1,2,3,4]",
        "model.channels=16",
        "model.context_heads=4",
        f"data.root={data}",
        "data.image_size=32",
        "data.val_fraction=0.34",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.log_interval=1",
        "train.deterministic=true",
        "train.amp=off",
        "train.lr=1e-2",
        "train.plateau_patience=0",  # every validation without a lower loss halves the lr
        "train.epochs=3",
    ]


def test_reference_recipe_trains_validates_round_trips_and_scores(tmp_path, reference_args) -> None:
    from engine.checkpoint import load_checkpoint

    straight = tmp_path / "straight"
    assert run_train([*reference_args, f"train.run_dir={straight}"]) == 0
    round_trips(straight)  # the plateau scheduler's state and the lowered lr come back whole

    a = load_checkpoint(straight / "last.pth")
    assert (a["epoch"], a["step"]) == (3, 6)
    assert set(a["scheduler"]) >= {"best", "num_bad_epochs"}
    assert a["scheduler"]["best"] == pytest.approx(min(e.value for e in _scalars(straight, "val/loss")))

    val_loss = _scalars(straight, "val/loss")
    assert [e.step for e in val_loss] == [2, 4, 6]
    best = load_checkpoint(straight / "best.pth")
    assert best["best"] == pytest.approx(min(e.value for e in val_loss)) == best["metrics"]["loss"]
    # the lr dropped exactly after the validations whose loss was not a new minimum
    lr = 1e-2 * 0.5 ** sum(v.value >= min(e.value for e in val_loss[:i]) for i, v in enumerate(val_loss) if i)
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(max(lr, 1e-4))

    cli = load_test_cli("test_cli_reference")
    assert cli.main(["--ckpt", str(straight / "best.pth"), "--out", str(tmp_path / "scores"), "train.amp=off"]) == 0
    assert (tmp_path / "scores" / "results.json").is_file()


def _scalars(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0}).Reload().Scalars(tag)


def test_resuming_with_another_scheduler_is_refused() -> None:
    from pathlib import Path

    from engine.checkpoint import CheckpointError
    from engine.checkpoint.training import restore_training
    from engine.optim import build_scheduler
    from engine.state import TrainState

    class Net(torch.nn.Linear):
        def frozen_keys(self):
            return set()

        def trainable_state_dict(self):
            return self.state_dict()

    net = Net(2, 2)
    opt = build_optimizer(net, lr=1.0, weight_decay=0.0)
    cosine = build_scheduler(opt, total_steps=10, warmup_steps=0, min_ratio=0.1)
    ckpt = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": cosine.state_dict(), "scaler": {}}
    cfg = load_config(None, ["train.scheduler=plateau", "train.warmup_epochs=0"])
    plateau = build_plateau_scheduler(opt, 0.5, 1, 0.1)
    state = TrainState(cfg, net, opt, plateau, torch.amp.GradScaler("cpu", enabled=False))
    with pytest.raises(CheckpointError, match="train.scheduler=plateau"):
        restore_training(state, ckpt, Path("last.pth"), batches_per_epoch=1)
