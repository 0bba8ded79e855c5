"""The leading recipes as published: E2Net-DINOv2's two rows (configs/e2net_dinov2_adapter.yaml = Ours2,
configs/e2net_dinov2_full_adapter.yaml = Ours1) and SAM2-UNeXT (configs/sam2_unext.yaml). Each loss against
the published formula written out here, the parts each config builds, one epoch on tiny trunks scored by
test.py, and eval.binarize."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from build import build_loss, build_model, check_config
from config import load_config
from datasets.build import train_transform
from engine.predict import quantise
from helpers import ROOT, load_test_cli, run_train
from models.unet import UNetDecoder

OURS2, OURS1, SAM2_UNEXT = (
    f"configs/{n}.yaml" for n in ("e2net_dinov2_adapter", "e2net_dinov2_full_adapter", "sam2_unext")
)


# ------------------------------------------------------------------ the published losses, written out
def _dice(p, m, smooth=1.0):  # train_alpha.py's dice_loss
    p, m = p.flatten(1), m.flatten(1)
    return 1.0 - ((2.0 * (p * m).sum(1) + smooth) / (p.sum(1) + m.sum(1) + smooth)).mean()


def _iou(p, m, smooth=1.0):  # train_alpha.py's iou_loss
    p, m = p.flatten(1), m.flatten(1)
    return 1.0 - (((p * m).sum(1) + smooth) / ((p + m - p * m).sum(1) + smooth)).mean()


def _bce(p, m):  # train_alpha.py's bce_loss: on probabilities
    return F.binary_cross_entropy(p, m, reduction="mean")


def ours2_loss(coarse, refined, final, m):  # train_alpha_newloss.py's compute_loss (lambdas 1, 1, 0.3)
    main = _dice(final, m) + _bce(final, m)
    return main + 0.3 * ((_bce(coarse, m) + _dice(coarse, m)) + 0.5 * (_bce(refined, m) + _dice(refined, m)))


def ours1_loss(coarse, refined, final, m):  # train_alpha.py's compute_loss (lambdas 1, 1, 1, 0.5, 0.3)
    terms = lambda p: _dice(p, m) + _bce(p, m) + _iou(p, m)  # noqa: E731
    return terms(final) + 0.5 * terms(coarse) + 0.3 * terms(refined)


def structure_loss(pred, mask):  # SAM2-UNeXT's train.py, reduce='none' and all
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy argument's deprecation warning
        wbce = F.binary_cross_entropy_with_logits(pred, mask, reduce="none")
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    pred = torch.sigmoid(pred)
    inter = ((pred * mask) * weit).sum(dim=(2, 3))
    union = ((pred + mask) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def test_each_config_loss_is_its_published_formula_on_random_maps() -> None:
    torch.manual_seed(0)
    mask = torch.rand(3, 1, 40, 40).pow(3)  # soft, as both train
    mask[0] = (mask[0] > 0.5).float()
    logits = [3 * torch.randn(3, 1, 40, 40) for _ in range(3)]  # coarse, refined, final
    probs = [torch.sigmoid(x) for x in logits]
    for path, published in ((OURS2, ours2_loss), (OURS1, ours1_loss)):
        total, _ = build_loss(load_config(path))(logits, mask)
        torch.testing.assert_close(total, published(*probs, mask), rtol=1e-5, atol=1e-6, msg=path)
    total, _ = build_loss(load_config(SAM2_UNEXT))(logits[-1:], mask)
    torch.testing.assert_close(total, structure_loss(logits[-1], mask), rtol=1e-5, atol=1e-6)
    # the BCE is the plain mean: weighting it too, as the formula intends, gives another number
    weighted, _ = build_loss(load_config(SAM2_UNEXT, ["loss.bce_weighted=true"]))(logits[-1:], mask)
    assert abs(weighted - total) > 1e-3


def test_each_config_cites_its_own_row() -> None:
    ours2, ours1 = ((ROOT / p).read_text() for p in (OURS2, OURS1))
    assert "COD10K .902/.967/.867/.014" in ours2 and ".898" not in ours2
    assert "COD10K .898/.961/.859/.016" in ours1 and ".902" not in ours1
    assert list(load_config(OURS2).model.encoder.adapter.blocks) == [3, 6, 9, 11]
    assert load_config(OURS1).model.encoder.adapter.blocks == "all"
    assert "final.pth" in (ROOT / SAM2_UNEXT).read_text()


# ------------------------------------------------------------------ what the configs build
@pytest.fixture(scope="module")
def trunks(tiny_dinov3_factory, tiny_sam2):
    """A 12-block tiny DINOv2 (patch 14) and the tiny SAM2 (6 blocks in stages 1 / 2 / 2 / 1, widths 16-128)."""
    return tiny_dinov3_factory(hidden=32, layers=12, heads=2, family="dinov2", patch=14, registers=0), tiny_sam2


def _dinov2_args(dinov2) -> list[str]:
    return [f"model.encoder.pretrained_path={dinov2}", "model.channels=16", "model.context_heads=2"]


def _sam2_unext_args(dinov2, sam2) -> list[str]:
    return [
        "model.encoder.backend=hf",
        "model.encoder.name=facebook/dinov2-base",
        f"model.encoder.pretrained_path={dinov2}",
        "model.encoder.layers=[12]",
        "model.encoder.image_size=28",
        "model.encoder2.backend=hf",
        "model.encoder2.name=facebook/sam2.1-hiera-large",
        f"model.encoder2.pretrained_path={sam2}",
        "model.encoder2.image_size=32",
        "model.channels=16",
        "data.image_size=32",
    ]


def test_ours2_builds_adapters_after_blocks_4_7_10_12_and_its_decoder(trunks) -> None:
    cfg = load_config(OURS2, [*_dinov2_args(trunks[0]), "data.image_size=42"])
    check_config(cfg)
    model = build_model(cfg).eval()
    assert sorted(int(k) for k in model.encoder.trunk.adapters) == [3, 6, 9, 11]
    x = torch.rand(1, 3, 42, 42)
    with torch.no_grad():
        feats = model.encoder(x)
        # the image's strides: 42 // 4, // 8, // 16, // 32, as 518 px gives 129 / 64 / 32 / 16
        assert [tuple(f.shape[-2:]) for f in feats] == [(10, 10), (5, 5), (2, 2), (1, 1)]
        aligned = model.caem(feats)
        assert all(a.shape[-2:] == (10, 10) for a in aligned)  # caem_align: finest
        c = model.caem  # the deepest level passes no squeeze-excitation: G4 = out_conv(resize(reduce(F4)))
        g4 = c.out[3](F.interpolate(c.reduce[3](feats[3]), size=(10, 10), mode="bilinear", align_corners=False))
        torch.testing.assert_close(aligned[3], g4)
        outputs = model(x)
    assert len(outputs) == 3 and all(o.shape == (1, 1, 42, 42) for o in outputs)


def test_sam2_unext_builds_adapters_before_blocks_a_one_output_unet_soft_flipped_masks(trunks) -> None:
    cfg = load_config(SAM2_UNEXT, _sam2_unext_args(*trunks))
    check_config(cfg)
    model = build_model(cfg).eval()
    assert model.caem is None and isinstance(model.decoder, UNetDecoder)
    trunk = model.encoder.primary.trunk
    assert len(trunk.adapters) == 6
    # block 1 opens the second stage: its adapter reads the first stage's width (16) in front of the block
    block, adapter = trunk.blocks[1], trunk.adapters["1"]
    assert (adapter.down.in_features, adapter.down.out_features) == (16, 32) and adapter.down.bias is not None
    x = torch.randn(1, 16, 16, 16)
    with torch.no_grad():
        prompt = F.gelu(
            F.linear(F.gelu(F.linear(x, adapter.down.weight, adapter.down.bias)), adapter.up.weight, adapter.up.bias)
        )
        torch.testing.assert_close(block(x), block.forward(x + prompt))
        assert [o.shape for o in model(torch.rand(1, 3, 32, 32))] == [(1, 1, 32, 32)]

    # data: soft masks resized bicubically, a vertical flip half the time, drawn after everything else
    rng_image = np.random.default_rng(0)
    image = rng_image.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    mask = cv2.GaussianBlur((rng_image.random((50, 70)) > 0.7).astype(np.uint8) * 255, (5, 5), 0)
    flipping, plain = train_transform(cfg.data), train_transform(load_config(SAM2_UNEXT, ["data.vflip=0"]).data)
    flips = 0
    for seed in range(8):
        (img, msk), (ref, _) = (t(image, mask, 64, np.random.default_rng(seed)) for t in (flipping, plain))
        flipped = torch.equal(img, ref.flip(-2))
        assert flipped or torch.equal(img, ref)
        flips += flipped
    assert 0 < flips < 8
    assert ((msk > 0) & (msk < 1)).any()  # never binarised
    _, resized = train_transform(load_config(SAM2_UNEXT, ["data.vflip=0", "data.hflip=0"]).data)(
        image, mask, 64, np.random.default_rng(0)
    )
    # OpenCV's bicubic resize, up to the warp's fixed-point coordinates (1/32 px), far from a bilinear one
    gap = {
        f: (resized[0] * 255 - torch.from_numpy(cv2.resize(mask, (64, 64), interpolation=f)).float()).abs().max()
        for f in (cv2.INTER_CUBIC, cv2.INTER_LINEAR)
    }
    assert gap[cv2.INTER_CUBIC] <= 2 and gap[cv2.INTER_LINEAR] > 8


def _published_attention(attn, query, context):  # lfsm.py / ccm.py: softmax(Q K^T / sqrt(d)) V, heads concatenated
    b, n, c = query.shape
    h = attn.heads
    w_k, w_v = attn.kv.weight.chunk(2)
    q, k, v = (
        t.reshape(b, -1, h, c // h).transpose(1, 2) for t in (query @ attn.q.weight.T, context @ w_k.T, context @ w_v.T)
    )
    weights = ((q @ k.transpose(-2, -1)) * (c // h) ** -0.5).softmax(dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, c)


def test_lfsm_and_ccm_attend_on_32x32_average_pooled_grids_as_published() -> None:
    from models.reference_dinov2 import PooledBlock, PooledCCM

    torch.manual_seed(0)
    block, ccm = PooledBlock(16, heads=2).eval(), PooledCCM(16, heads=2).eval()
    x, kv = torch.randn(1, 16, 34, 34), torch.randn(1, 16, 34, 34)
    up = lambda t: F.interpolate(t, size=(34, 34), mode="bilinear", align_corners=False)  # noqa: E731
    with torch.no_grad():
        # lfsm.py's TransformerBlock: x = attn(x) (LayerNorm on the pooled tokens, resized back, + x), then the MLP
        small = F.adaptive_avg_pool2d(x, (32, 32)).flatten(2).transpose(1, 2)
        tokens = block.norm1(small)
        out = block.attn.proj(_published_attention(block.attn, tokens, tokens))
        y = up(out.transpose(1, 2).reshape(1, 16, 32, 32)) + x
        flat = y.flatten(2).transpose(1, 2)
        want = (flat + block.mlp(block.norm2(flat))).transpose(1, 2).reshape(1, 16, 34, 34)
        torch.testing.assert_close(block(x), want, rtol=1e-4, atol=1e-5)
        # ccm.py's GatedCrossAttention: both sides pooled, out * sigmoid(gate(out)), proj, resized back, + query
        q, c = (ccm.norm_q, ccm.norm_kv)
        q_tok = q(F.adaptive_avg_pool2d(x, (32, 32)).flatten(2).transpose(1, 2))
        kv_tok = c(F.adaptive_avg_pool2d(kv, (32, 32)).flatten(2).transpose(1, 2))
        out = _published_attention(ccm.attn, q_tok, kv_tok)
        out = ccm.attn.proj(out * torch.sigmoid(ccm.gate(out)))
        want = up(out.transpose(1, 2).reshape(1, 16, 32, 32)) + x
        torch.testing.assert_close(ccm.cross(x, kv), want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ one epoch each, scored by test.py
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from scripts.make_synthetic_cod import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, n_train=2, n_test=1, size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def cli():
    return load_test_cli("e2net_test_cli_recipes")


@pytest.mark.parametrize("recipe", ["ours2", "sam2_unext"])
def test_recipe_trains_one_epoch_and_test_py_scores_it(tmp_path, trunks, data, cli, recipe) -> None:
    if recipe == "ours2":
        path, args, ckpt = OURS2, [*_dinov2_args(trunks[0]), "data.image_size=42"], "best.pth"
    else:
        path, args, ckpt = SAM2_UNEXT, _sam2_unext_args(*trunks), "final.pth"
    run = tmp_path / "run"
    common = [
        f"data.root={data}",
        "train.num_workers=0",
        "train.epochs=1",
        "train.batch_size=2",
        f"train.run_dir={run}",
    ]
    assert run_train(["--config", path, *args, *common]) == 0
    assert cli.main(["--ckpt", str(run / ckpt), "--workers", "1", "--no-report", "train.amp=off"]) == 0
    maps = sorted((run / "test" / ckpt.removesuffix(".pth") / "preds").rglob("*.png"))
    assert len(maps) == 1
    values = np.unique(np.concatenate([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).ravel() for p in maps]))
    if recipe == "ours2":  # eval.binarize: 0.5, written and scored as 0 / 255
        assert set(values.tolist()) <= {0, 255}


def test_binarize_keeps_only_what_lies_above_the_threshold() -> None:
    p = torch.tensor([[[[0.2, 0.5, 0.5001, 0.99]]]])
    assert quantise(p, binarize=0.5).tolist() == [[0, 0, 255, 255]]
    assert quantise(p, floor=True, binarize=0.5).tolist() == [[0, 0, 255, 255]]
    assert quantise(p).tolist() == [[51, 128, 128, 252]]
