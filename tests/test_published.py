"""The published E2Net's quirks (y3none/E2Net), each a switch: raw tapped layers, its initialisation,
its crop, soft masks, the Sobel term over the batch with zero padding, Dice/IoU smoothing and the
double sigmoid on the coarse map, checked against the published formulas written out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import SqueezeExcitation
from transformers import AutoModel

import datasets
from caem import CAEM
from datasets.reading import decode_mask
from datasets.transforms import TrainTransform, side_crop_box
from encoders.trunks import HFViT, TimmViT
from models.blocks import Attention
from models.init import SE_STD, published_init_
from models.losses import CODLoss
from models.reference import E2NetRefDecoder


# ------------------------------------------------------------------ raw taps
@pytest.mark.parametrize(
    "arch",
    [{"registers": 0}, {"registers": 4}, {"family": "dinov2", "hidden": 32, "heads": 2, "patch": 14, "registers": 4}],
    ids=["dinov3-0-registers", "dinov3-4-registers", "dinov2-4-registers"],
)
def test_raw_taps_are_transformers_hidden_states_without_the_final_norm(tiny_dinov3_factory, arch) -> None:
    folder = tiny_dinov3_factory(layers=4, **arch)
    model = AutoModel.from_pretrained(folder).eval()
    trunk = HFViT(model)
    p, R, D = trunk.patch_size, trunk.num_registers, trunk.embed_dim
    x = torch.randn(2, 3, 3 * p, 5 * p)
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
        raw, normed = trunk(x, (1, 2, 4), norm=False), trunk(x, (1, 2, 4))
    for got, t in zip(raw, (1, 2, 4)):
        want = hidden[t][:, 1 + R :].transpose(1, 2).reshape(2, D, 3, 5)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.allclose(raw[2], normed[2], atol=1e-2)  # the default still applies the final norm


def test_timm_raw_taps_are_the_normed_taps_before_the_final_norm() -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_base_patch16_dinov3", pretrained=False, num_classes=0, embed_dim=64, depth=4, num_heads=2
    ).eval()
    trunk = TimmViT(model, "dinov3_vit")
    x = torch.randn(1, 3, 48, 32)
    with torch.no_grad():
        raw, normed = trunk(x, (2, 4), norm=False), trunk(x, (2, 4))
        for r, n in zip(raw, normed):
            renormed = model.norm(r.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            torch.testing.assert_close(renormed, n, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(raw[1], normed[1], atol=1e-2)


# ------------------------------------------------------------------ initialisation
def _published_decoder(channels: int = 64, se_bias: bool = False) -> tuple[CAEM, E2NetRefDecoder]:
    torch.manual_seed(0)
    caem = CAEM(
        channels, out_channels=channels, norm="bn", num_levels=4, align="finest", reduce_norm=False, se_bias=se_bias
    )
    decoder = E2NetRefDecoder(channels, 4, heads=8, norm="bn")
    for m in [*caem.modules(), *decoder.modules()]:  # a trained-looking state, so that the reset shows
        if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    published_init_([caem, decoder], keep_conv_bias=[decoder.lfsm, decoder.cfzm])
    return caem, decoder


def _assert_std(w: torch.Tensor, want: float, name: str) -> None:
    # a sample of n has a relative std error ~ 1 / sqrt(2n): 3 % covers n >= 2000 at > 4 sigma
    tol = 0.03 if w.numel() >= 2000 else 0.5
    assert w.std().item() == pytest.approx(want, rel=tol), name
    assert abs(w.mean().item()) < 4 * want / math.sqrt(w.numel()) + 1e-9, name


def test_published_init_statistics_per_layer_type() -> None:
    caem, decoder = _published_decoder()
    kept = {id(m) for owner in (decoder.lfsm, decoder.cfzm) for m in owner.modules()}
    se_convs = {id(fc) for m in caem.modules() if isinstance(m, SqueezeExcitation) for fc in (m.fc1, m.fc2)}
    seen = {"conv": 0, "se": 0, "linear": 0, "attention": 0, "norm": 0, "kept bias": 0}
    for name, m in [*caem.named_modules(prefix="caem"), *decoder.named_modules(prefix="decoder")]:
        if id(m) in se_convs:
            _assert_std(m.weight, SE_STD, name)
            assert m.bias is None, name  # the published channel attention has no bias
            seen["se"] += 1
        elif isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            _assert_std(m.weight, math.sqrt(2 / fan_out), name)
            if m.bias is not None and id(m) in kept:  # PyTorch's default, never reset by the published code
                bound = 1 / math.sqrt(m.in_channels * m.kernel_size[0] * m.kernel_size[1])
                assert m.bias.abs().max() <= bound and m.bias.abs().max() > 0, name
                seen["kept bias"] += 1
            elif m.bias is not None:
                assert not m.bias.any(), name
            seen["conv"] += 1
        elif isinstance(m, Attention):  # the published nn.MultiheadAttention's [3C, C] in-projection
            c = m.q.in_features
            bound = math.sqrt(6 / (4 * c))
            for proj in (m.q, m.kv):
                assert proj.weight.abs().max() <= bound
                _assert_std(proj.weight, bound / math.sqrt(3), name)
                assert not proj.bias.any()
            _assert_std(m.proj.weight, math.sqrt(2 / (2 * c)), name)  # Xavier uniform on [C, C]
            seen["attention"] += 1
        elif isinstance(m, nn.Linear) and name.split(".")[-1] not in ("q", "kv", "proj"):
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            assert m.weight.abs().max() <= bound
            _assert_std(m.weight, bound / math.sqrt(3), name)
            assert not m.bias.any()
            seen["linear"] += 1
        elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any(), name
            seen["norm"] += 1
    # CAEM: 4 reductions + 3 fusions; LFSM: 2; CFZM: 4; CCM: q, k, v, gate, 3 up, 2 fuse, 2 predict
    assert seen == {"conv": 24, "se": 8, "linear": 2, "attention": 1, "norm": 14, "kept bias": 1}


def test_squeeze_excitation_biases_are_zeroed_when_present() -> None:
    caem, _ = _published_decoder(se_bias=True)
    biases = [m.fc1.bias for m in caem.attend] + [m.fc2.bias for m in caem.attend]
    assert all(b is not None and not b.any() for b in biases)


# ------------------------------------------------------------------ crop
def test_side_crop_draws_the_published_total_cut_per_axis() -> None:
    rng = np.random.default_rng(0)
    height, width = 320, 480  # int(side / 8) = 40 and 60
    boxes = np.array([side_crop_box(height, width, 0.125, rng) for _ in range(20000)])
    x0, y0, w, h = boxes.T
    cut_w, cut_h = width - w, height - h
    # totals uniform on {0, ..., side/8 - 1}: mean (side/8 - 1) / 2 = side/16 - 1/2, never side/8
    assert cut_w.mean() == pytest.approx(width / 16 - 0.5, abs=0.5) and cut_w.max() == width // 8 - 1
    assert cut_h.mean() == pytest.approx(height / 16 - 0.5, abs=0.4) and cut_h.max() == height // 8 - 1
    assert set(np.unique(cut_h)) == set(range(height // 8))
    # the left (top) share is uniform below the total; the right (bottom) side keeps at least 1 px of it
    cut = cut_h > 0
    assert (y0[cut] < cut_h[cut]).all() and (y0 >= 0).all() and (y0[~cut] == 0).all()
    assert y0[cut].mean() == pytest.approx(((cut_h[cut] - 1) / 2).mean(), abs=0.3)
    assert (x0 + w <= width).all() and (x0[cut_w == 0] == 0).all()
    assert side_crop_box(7, 7, 0.125, rng) == (0, 0, 7, 7)  # too short to cut


def test_side_crop_in_the_transform_keeps_whole_pixel_boxes() -> None:
    # a vertical edge at column 32 of 64: an integer cut moves it between draws, never beyond 1/8
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 255
    t = TrainTransform(hflip=0, rotate=0, color_jitter=0, side_crop=0.125)
    rng = np.random.default_rng(0)
    edges = {int(t(image, image[..., 0].copy(), 64, rng)[1][0, 0].argmax()) for _ in range(40)}
    assert len(edges) > 1 and all(29 <= e <= 36 for e in edges)
    assert t.needed_side(98) == pytest.approx(112)


# ------------------------------------------------------------------ soft masks
def test_soft_masks_keep_their_grey_levels(tmp_path) -> None:
    import cv2

    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 100  # a grey object: below the 127 threshold
    mask[15:25, 15:25] = 255
    image = np.full((40, 40, 3), 128, np.uint8)
    soft = datasets.TestTransform(soft_masks=True)(image, mask, 40)[1]
    assert set(torch.unique(soft * 255).round().tolist()) == {0.0, 100.0, 255.0}
    assert set(torch.unique(datasets.TestTransform()(image, mask, 40)[1]).tolist()) == {0.0, 1.0}
    rng = np.random.default_rng(0)
    t = TrainTransform(hflip=0, rotate=0, scale=(1, 1), color_jitter=0, soft_masks=True)
    assert torch.isclose(t(image, mask, 40, rng)[1], soft, atol=1 / 255).all()
    # ... read from the file as they are: the dataset asks the transform which masks it needs
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    assert set(np.unique(decode_mask(tmp_path / "m.png", binarize=False))) == {0, 100, 255}
    cv2.imwrite(str(tmp_path / "i.jpg"), image)
    s = datasets.Sample(str(tmp_path / "i.jpg"), str(tmp_path / "m.png"), "i", 40, 40, 40, 40)
    out = datasets.CODDataset([s], datasets.TestTransform(soft_masks=True), 40)[0]["mask"]
    assert torch.equal(out, soft)


# ------------------------------------------------------------------ the published loss, written out
SOBEL_X = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])


def published_loss(final: torch.Tensor, coarse: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The published ImprovedLoss with the shell script's weights (2.5, 1.0, 0.2, 0.7, 1.0)."""

    def edges(x: torch.Tensor) -> torch.Tensor:
        gx = F.conv2d(x, SOBEL_X.view(1, 1, 3, 3), padding=1)
        gy = F.conv2d(x, SOBEL_X.t().reshape(1, 1, 3, 3), padding=1)
        return torch.sqrt(gx**2 + gy**2 + 1e-8)

    def dice(x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(x)
        return 1 - (2 * (p * target).sum() + 1e-5) / (p.sum() + target.sum() + 1e-5)

    def iou(x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(x)
        inter = (p * target).sum()
        return 1 - (inter + 1e-5) / (p.sum() + target.sum() - inter + 1e-5)

    t = edges(target)
    t = ((t / t.max() if t.max() > 1e-6 else t) > 0.1).float()
    p = edges(torch.sigmoid(final))
    p = (p / p.max() if p.max() > 1e-6 else p).clamp(0, 1)
    edge = F.binary_cross_entropy(p, t)
    bce = F.binary_cross_entropy_with_logits
    main = 2.5 * dice(final) + 1.0 * bce(final, target) + 1.0 * iou(final) + 0.7 * edge
    return main + 0.2 * (dice(coarse) + bce(coarse, target))


def test_loss_with_the_published_switches_is_the_published_loss() -> None:
    torch.manual_seed(0)
    target = F.avg_pool2d((torch.rand(3, 1, 24, 24) > 0.6).float(), 3, 1, 1)  # soft masks
    target[0, :, :, :4] = 1.0  # an object touching the border: zero padding gives it an edge there
    final = 3 * torch.randn(3, 1, 24, 24)
    coarse = torch.rand(3, 1, 24, 24)  # a probability map, read as logits (the double sigmoid)
    loss = CODLoss(
        weights={"dice": 2.5, "bce": 1.0, "iou": 1.0, "sobel": 0.7},
        side=0,
        weighted=False,
        pooled=True,
        coarse_terms=["dice", "bce"],
        coarse=0.2,
        smooth=1e-5,
        sobel_peak="batch",
        sobel_border="zeros",
    )
    total, _ = loss([coarse, final], target)
    assert total.item() == pytest.approx(published_loss(final, coarse, target).item(), rel=1e-5)
    # each switch matters here: the per-image maxima and the replicated border give other values
    sobel = {"weights": {"sobel": 1.0}, "side": 0, "weighted": False}
    base, _ = CODLoss(**sobel, sobel_peak="batch", sobel_border="zeros")([final], target)
    for other in ({"sobel_peak": "image"}, {"sobel_border": "replicate"}):
        changed, _ = CODLoss(**sobel, **{"sobel_peak": "batch", "sobel_border": "zeros", **other})([final], target)
        assert changed.item() != pytest.approx(base.item(), rel=1e-3)


def test_coarse_sigmoid_returns_the_resized_probabilities() -> None:
    torch.manual_seed(0)
    feats = [torch.randn(2, 16, 3, 4) for _ in range(4)]
    plain = E2NetRefDecoder(16, 4, heads=4).eval()
    double = E2NetRefDecoder(16, 4, heads=4, coarse_sigmoid=True).eval()
    double.load_state_dict(plain.state_dict())
    with torch.no_grad():
        (c0, f0), (c1, f1) = plain(feats, (24, 32)), double(feats, (24, 32))
        lfsm = plain.lfsm(feats[-1])
    torch.testing.assert_close(f0, f1)  # the final map does not change
    want = F.interpolate(torch.sigmoid(lfsm), size=(24, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(c1, want)  # sigmoid first, then the resize, as published
    assert not torch.allclose(torch.sigmoid(c0), c1)  # not the sigmoid of the resized logits


# ------------------------------------------------------------------ the two configs
PUBLISHED, REFERENCE = "configs/e2net_published.yaml", "configs/e2net_reference.yaml"


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_reference_differs_from_published_exactly_on_its_differs_lines() -> None:
    import yaml

    published, reference = (_leaves(yaml.safe_load(open(f))) for f in (PUBLISHED, REFERENCE))
    assert set(published) == set(reference)
    differing = {k for k in published if published[k] != reference[k]}
    # the keys on lines marked DIFFERS, found by indentation (each nested key's section precedes it)
    marked, path = set(), []
    for line in open(REFERENCE):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        key = line.strip().split(":")[0]
        path = [*path[:depth], key]
        if "# DIFFERS:" in line:
            marked.add(".".join(path))
    assert differing == marked | {"train.name"}
    assert {"model.encoder.channel_order", "model.coarse_sigmoid", "loss.sobel_peak", "data.image_size"} <= marked


def _tiny(path: str, encoder, *more: str):
    from config import load_config

    return load_config(
        path, [f"model.encoder.pretrained_path={encoder}", "model.channels=16", "model.context_heads=4", *more]
    )


def test_bgr_order_and_published_statistics_reach_the_trunk(tiny_dinov3) -> None:
    from build import build_model

    model = build_model(_tiny(PUBLISHED, tiny_dinov3)).eval()
    seen = []
    model.encoder.trunk.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["pixel_values"]), with_kwargs=True
    )
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        model(x)
    mean = torch.tensor([124.55, 118.90, 102.94]).view(1, 3, 1, 1)
    std = torch.tensor([56.77, 55.97, 57.50]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (255 * x.flip(1) - mean) / std)  # B, G, R, each by the published statistics
    reference = build_model(_tiny(REFERENCE, tiny_dinov3)).eval()
    reference.encoder.trunk.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["pixel_values"]), with_kwargs=True
    )
    with torch.no_grad():
        reference(x)
    torch.testing.assert_close(seen[1], (255 * x - mean) / std)  # the same statistics, on R, G, B


def test_392_px_gives_24_patches_and_drops_the_border_as_published(tiny_dinov3) -> None:
    from build import build_model

    model = build_model(_tiny(PUBLISHED, tiny_dinov3)).eval()  # patch 16
    x = torch.rand(1, 3, 392, 392)
    edited = x.clone()
    edited[..., 384:, :] = 0  # the last 8 rows and columns: read by no patch
    edited[..., :, 384:] = 1
    with torch.no_grad():
        maps, maps_edited = model.encoder(x), model.encoder(edited)
        outputs = model(x)
    assert [tuple(m.shape[-2:]) for m in maps] == [(24, 24)] * 4
    assert all(torch.equal(a, b) for a, b in zip(maps, maps_edited))
    assert [tuple(o.shape) for o in outputs] == [(1, 1, 392, 392)] * 2  # stretched over the whole input
    inside = x.clone()
    inside[..., 383, 0] = 1 - inside[..., 383, 0]
    with torch.no_grad():
        assert not torch.equal(model.encoder(inside)[0], maps[0])


def test_published_test_time_path_resizes_logits_then_floors(tiny_dinov3) -> None:
    from build import build_model
    from engine.amp import Precision
    from engine.predict import MapRule, final_maps, forward_probs, quantise

    torch.manual_seed(0)
    model = build_model(_tiny(PUBLISHED, tiny_dinov3, "data.image_size=48")).eval()
    x, sizes = torch.rand(2, 3, 48, 48), [(37, 61), (50, 29)]
    precision = Precision("cpu", "off")
    with torch.no_grad():
        _, prob = forward_probs(model, x, precision)
        published = final_maps(model, x, prob, sizes, precision, MapRule(resize_logits=True, floor=True))
        plain = final_maps(model, x, prob, sizes, precision, MapRule())
        for j, size in enumerate(sizes):
            ccm = model.decoder.ccm(
                model.decoder.cfzm(feats := model.caem(model.encoder(x[j : j + 1])), model.decoder.lfsm(feats[-1]))
            )
            logits = F.interpolate(ccm, size=size, mode="bilinear", align_corners=False)  # from CCM's own output
            want = (torch.sigmoid(logits)[0, 0] * 255).numpy().astype(np.uint8)  # test_e2net.py
            np.testing.assert_array_equal(published[j], want)
            assert plain[j].shape == size and not np.array_equal(plain[j], published[j])
    assert quantise(torch.full((1, 1, 1, 1), 0.999), floor=True).item() == 254
    assert quantise(torch.full((1, 1, 1, 1), 0.999)).item() == 255


# ------------------------------------------------------------------ end to end on generated data
@pytest.fixture(scope="module")
def published_args(tmp_path_factory, tiny_dinov3_factory):
    from scripts.make_synthetic_cod import generate

    data = tmp_path_factory.mktemp("synth_published")
    generate(data, n_train=8, n_test=3, size=48, seed=0)
    return [
        "--config",
        PUBLISHED,
        f"model.encoder.pretrained_path={tiny_dinov3_factory(layers=4)}",
        "model.encoder.layers=[1,2,3,4]",
        "model.channels=16",
        "model.context_heads=4",
        f"data.root={data}",
        "data.val_set=SynthCOD",  # the generated set's only benchmark stands in for CAMO-test
        "data.image_size=40",  # 2x2 patches of 16 px, the last 8 px dropped, as 392 -> 384
        "train.batch_size=4",
        "train.num_workers=0",
        "train.deterministic=true",
        "train.lr=1e-2",
        "train.epochs=2",
    ]


def test_val_augment_draws_new_crops_and_flips_every_epoch(published_args) -> None:
    import datasets
    from config import load_config

    cfg = load_config(published_args[1], published_args[2:])
    _, val = datasets.build_train_val(cfg)
    assert isinstance(val.transform, TrainTransform) and val.transform.soft_masks
    loader = datasets.build_loader(val, cfg, train=False)
    masks = []
    for epoch in (1, 2):
        datasets.set_epoch(loader, epoch)
        masks.append(torch.cat([b["mask"] for b in loader]))
    assert masks[0].shape == (3, 1, 40, 40) and not torch.equal(masks[0], masks[1])
    assert ((masks[0] > 0) & (masks[0] < 1)).any()  # soft masks


def test_published_recipe_trains_validates_round_trips_and_scores(tmp_path, published_args) -> None:
    from engine.checkpoint import load_checkpoint
    from helpers import load_test_cli, round_trips, run_train

    straight = tmp_path / "straight"
    assert run_train([*published_args, f"train.run_dir={straight}"]) == 0
    round_trips(straight)
    a = load_checkpoint(straight / "last.pth")
    assert (a["epoch"], a["step"]) == (2, 4)
    assert set(a["metrics"]) == {"loss", "n_images"}  # augmented validation: the loss alone
    best = load_checkpoint(straight / "best.pth")
    assert best["best"] == best["metrics"]["loss"]
    cli = load_test_cli("test_cli_published")
    assert cli.main(["--ckpt", str(straight / "best.pth"), "--out", str(tmp_path / "scores"), "train.amp=off"]) == 0
    assert (tmp_path / "scores" / "results.json").is_file()
