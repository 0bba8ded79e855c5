"""E2Net: CAEM and decoder shapes, gradients, trainable state dict, FLOP budget, overfitting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from build import build_loss, build_model
from caem import CAEM
from config import load_config
from encoders.pyramids import SimpleFeaturePyramid
from engine.checkpoint import CheckpointError, load_weights
from models.heads import E2NetDecoder
from models.linear import LinearDecoder

PYRAMID = (4, 8, 16, 32)
SIMPLE = (16, 16, 16, 16)


@pytest.fixture
def one_thread():
    """Tiny ops run far faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pyramid(widths, strides, h=64, w=96, batch=2):
    """Random encoder maps [B, C_i, ceil(h/s_i), ceil(w/s_i)]."""
    return [torch.randn(batch, c, -(-h // s), -(-w // s)) for c, s in zip(widths, strides)]


def tiny_cfg(folder: Path, *overrides: str):
    return load_config(
        None,
        [
            f"model.encoder.pretrained_path={folder}",
            "model.channels=16",
            "model.context_heads=2",
            "train.amp=off",
            *overrides,
        ],
    )


# ------------------------------------------------------------------ modules on random tensors
@pytest.mark.parametrize("strides", [PYRAMID, SIMPLE])
@pytest.mark.parametrize("in_channels", [24, [8, 16, 32, 32]])
def test_caem_keeps_each_level_size_and_sets_the_width(in_channels, strides) -> None:
    widths = [in_channels] * 4 if isinstance(in_channels, int) else in_channels
    feats = pyramid(widths, strides)
    out = CAEM(in_channels, out_channels=16)(feats)
    assert [tuple(o.shape) for o in out] == [(2, 16, *f.shape[-2:]) for f in feats]


@pytest.mark.parametrize("strides", [PYRAMID, SIMPLE])
@pytest.mark.parametrize("size", [(64, 96), (96, 48)])
def test_decoders_return_logits_at_input_size_final_last(strides, size) -> None:
    h, w = size
    e2net = E2NetDecoder(16, heads=2).train()
    outs = e2net(pyramid([16] * 4, strides, h, w), size)
    assert len(outs) == 3 and all(o.shape == (2, 1, h, w) for o in outs)
    e2net.eval()
    assert len(e2net(pyramid([16] * 4, strides, h, w), size)) == 3  # same list in eval
    linear = LinearDecoder([8, 16, 32, 32])
    outs = linear(pyramid([8, 16, 32, 32], strides, h, w), size)
    assert len(outs) == 1 and outs[0].shape == (2, 1, h, w)


def test_trainable_part_is_within_a_quarter_of_vit_b_flops_at_384() -> None:
    """Pyramid + CAEM + decoder for a ViT-B/16 (width 768) at 384 px, counted on the meta device."""
    with torch.device("meta"):
        fpn, caem, dec = (
            SimpleFeaturePyramid(768),
            CAEM([192, 384, 768, 768], out_channels=128),
            E2NetDecoder(128, heads=4),
        )
        grid = [torch.empty(1, 768, 24, 24)] * 4
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            dec(caem(fpn(grid)), (384, 384))
    n, d, depth = 24 * 24 + 5, 768, 12  # patches + CLS + 4 registers
    vit_b = depth * 2 * (n * (4 * d * d + 2 * d * 4 * d) + 2 * n * n * d)  # multiply-add = 2 FLOPs
    assert counter.get_total_flops() <= 0.25 * vit_b


# ------------------------------------------------------------------ the assembled model
@pytest.mark.parametrize("simple", [False, True])
@pytest.mark.parametrize("decoder", ["e2net", "linear"])
def test_model_outputs_at_input_size_in_train_and_eval(tiny_dinov3, one_thread, decoder, simple) -> None:
    model = build_model(tiny_cfg(tiny_dinov3, f"model.decoder={decoder}", f"model.encoder.simple={simple}"))
    x = torch.rand(2, 3, 64, 96)  # non-square, multiples of the patch size 16
    n = 3 if decoder == "e2net" else 1
    for train in (True, False):
        outs = model.train(train)(x)
        assert isinstance(outs, list) and len(outs) == n
        assert all(o.shape == (2, 1, 64, 96) for o in outs)
    assert not model.train().encoder.trunk.training  # the frozen trunk stays in eval mode


@pytest.mark.parametrize("decoder,trainable_blocks", [("e2net", 0), ("linear", 0), ("e2net", 1)])
def test_gradient_reaches_every_trainable_parameter_and_no_frozen_one(
    tiny_dinov3, one_thread, decoder, trainable_blocks
) -> None:
    cfg = tiny_cfg(
        tiny_dinov3,
        f"model.decoder={decoder}",
        f"model.encoder.trainable_blocks={trainable_blocks}",
        "loss.dice=1",
        "loss.edge=1",
    )
    model, loss_fn = build_model(cfg).train(), build_loss(cfg)
    mask = torch.zeros(2, 1, 64, 96)
    mask[..., 16:48, 24:72] = 1
    loss, _ = loss_fn(model(torch.rand(2, 3, 64, 96)), mask)
    loss.backward()
    named = dict(model.named_parameters())
    frozen = [n for n, p in named.items() if not p.requires_grad]
    assert frozen and all(named[n].grad is None for n in frozen)
    no_grad = [n for n, p in named.items() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert no_grad == []
    assert any(n.startswith("encoder.pyramid.") for n, p in named.items() if p.requires_grad)
    if trainable_blocks:  # the fine-tuned last block is among the parameters checked above
        assert any(".layer.11." in n for n, p in named.items() if p.requires_grad)


def test_trainable_state_dict_round_trip_and_strictness(tiny_dinov3, one_thread) -> None:
    cfg = tiny_cfg(tiny_dinov3, "model.encoder.trainable_blocks=1")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    sd = model.trainable_state_dict()
    assert not any(k.startswith("encoder.trunk.model.model.layer.0.") for k in sd)  # frozen: left out
    assert any(k.startswith("encoder.trunk.model.model.layer.11.") for k in sd)  # fine-tuned block: kept
    assert any(k.startswith("encoder.pyramid.") for k in sd) and any(k.startswith("decoder.") for k in sd)
    assert len(sd) < len(model.state_dict())

    torch.manual_seed(1)
    other = build_model(cfg).eval()
    x = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(model(x)[-1], other(x)[-1])
    load_weights(other, sd, Path("a.pth"))
    torch.testing.assert_close(other(x)[-1], model(x)[-1])

    missing = {k: v for k, v in sd.items() if not k.startswith("caem.reduce.0.")}
    with pytest.raises(CheckpointError, match=r"missing \d+: \['caem.reduce.0."):
        load_weights(other, missing, Path("a.pth"))
    with pytest.raises(CheckpointError, match=r"unexpected 1: \['decoder.extra.weight'\]"):
        load_weights(other, {**sd, "decoder.extra.weight": torch.zeros(1)}, Path("a.pth"))


def test_channels_last_gives_the_same_logits(tiny_dinov3, one_thread) -> None:
    torch.manual_seed(0)
    plain = build_model(tiny_cfg(tiny_dinov3)).eval()
    torch.manual_seed(0)
    nhwc = build_model(tiny_cfg(tiny_dinov3, "model.channels_last=true")).eval()
    assert nhwc.decoder.refine.fuse4[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(plain(x), nhwc(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_compile_option_keeps_state_dict_keys(tiny_dinov3) -> None:
    plain = build_model(tiny_cfg(tiny_dinov3))
    compiled = build_model(tiny_cfg(tiny_dinov3, "model.compile=true"))
    assert compiled.decoder._compiled_call_impl is not None and compiled.caem._compiled_call_impl is not None
    assert plain.decoder._compiled_call_impl is None
    assert list(compiled.trainable_state_dict()) == list(plain.trainable_state_dict())


def test_overfits_a_small_batch_under_bf16_autocast(tiny_dinov3, one_thread) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(tiny_dinov3)
    model, loss_fn = build_model(cfg).train(), build_loss(cfg)
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    masks = torch.stack(
        [(yy - 24) ** 2 + (xx - 40) ** 2 < 15**2, (yy - 40) ** 2 / 1.5 + (xx - 24) ** 2 < 12**2]
    ).float()[:, None]
    images = torch.rand(2, 3, 64, 64) * 0.5 + masks * 0.3
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(200):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = model(images)
        loss, _ = loss_fn(outputs, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, f"loss fell from {losses[0]:.3f} to only {losses[-1]:.3f}"


def test_model_info_prints_the_table(tiny_dinov3, one_thread, capsys) -> None:
    from scripts.model_info import main

    main(
        [
            f"model.encoder.pretrained_path={tiny_dinov3}",
            "model.channels=16",
            "model.context_heads=2",
            "train.amp=off",
            "--size",
            "64",
            "96",
        ]
    )
    out = capsys.readouterr().out
    for row in (
        "trainable params",
        "frozen params",
        "frozen encoder forward GFLOPs",
        "trainable-part forward GFLOPs",
        "trainable / frozen encoder",
    ):
        assert row in out
    assert "1x1x64x96, 1x1x64x96, 1x1x64x96" in out
