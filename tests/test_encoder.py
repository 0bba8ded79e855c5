"""DINOv3 encoder on tiny random models: token stripping, freezing, shapes, dtypes, errors."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from transformers import AutoModel

from dinov3_encoder import build_dinov3_encoder
from encoders.loading import default_layers, read_architecture

HUB_ID = "facebook/dinov3-vitb16-pretrain-lvd1689m"
TIMM_VIT = "vit_base_patch16_dinov3"
TIMM_VIT_KW = {"embed_dim": 64, "depth": 4, "num_heads": 2}
TIMM_CNX = "convnext_tiny.dinov3_lvd1689m"
TIMM_CNX_KW = {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)}


def _reference_maps(folder: Path, x: torch.Tensor, layers, mean, std) -> list[torch.Tensor]:
    """transformers' own forward: hidden_states[l] through the final norm, prefix tokens dropped."""
    model = AutoModel.from_pretrained(folder).eval()
    B, _, H, W = x.shape
    p, R = model.config.patch_size, model.config.num_register_tokens
    with torch.no_grad():
        out = model((x - mean) / std, output_hidden_states=True)
    assert out.hidden_states[0].shape[1] == 1 + R + (H // p) * (W // p)  # CLS, registers, patches
    return [model.norm(out.hidden_states[i])[:, 1 + R :].transpose(1, 2).reshape(B, -1, H // p, W // p) for i in layers]


@pytest.fixture(scope="module")
def timm_vit_pth(tmp_path_factory) -> Path:
    """A tiny timm DINOv3 ViT saved with Meta's key names (storage_tokens, ls1.gamma, masked qkv bias);
    the same weights in timm's names sit next to it as ``.ref``."""
    model = timm.create_model(TIMM_VIT, pretrained=False, num_classes=0, **TIMM_VIT_KW)
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        sd[k] = v
        if k.endswith("attn.qkv.weight"):
            sd[k[:-6] + "bias"] = torch.zeros(v.shape[0])
            sd[k[:-6] + "bias_mask"] = torch.ones(v.shape[0])
    sd["mask_token"] = torch.zeros(1, TIMM_VIT_KW["embed_dim"])
    path = tmp_path_factory.mktemp("timm") / "dinov3_vit_meta.pth"
    torch.save(sd, path)
    torch.save(model.state_dict(), path.with_suffix(".ref"))
    return path


@pytest.fixture(scope="module")
def timm_convnext_pth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("timm") / "convnext.pth"
    torch.save(timm.create_model(TIMM_CNX, pretrained=False, num_classes=0, **TIMM_CNX_KW).state_dict(), path)
    return path


def _first(output):
    return output[0] if isinstance(output, tuple) else output


# -------------------------------------------------------------------- 1. token layout
@pytest.mark.parametrize("registers", [0, 4])
def test_stride16_maps_are_hidden_states_without_prefix_tokens(tiny_dinov3_factory, registers: int) -> None:
    folder = tiny_dinov3_factory(registers=registers)
    layers = (2, 5, 7, 12)
    enc = build_dinov3_encoder(pretrained_path=str(folder), layers=layers, simple=True)
    x = torch.rand(2, 3, 48, 80)  # non-square: a 3 x 5 patch grid
    maps = enc(x)
    ref = _reference_maps(folder, x, layers, enc.pixel_mean, enc.pixel_std)
    assert len(maps) == len(ref) == 4
    for got, want in zip(maps, ref):
        assert got.shape == (2, 64, 3, 5)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(maps[0], maps[1], atol=1e-2)  # different blocks really were tapped


def test_extract_returns_last_layer_tokens(tiny_dinov3: Path) -> None:
    enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3))
    x = torch.rand(1, 3, 32, 64)
    feats = enc.extract(x)
    model = AutoModel.from_pretrained(tiny_dinov3).eval()
    with torch.no_grad():
        last = model((x - enc.pixel_mean) / enc.pixel_std).last_hidden_state  # normed
    torch.testing.assert_close(feats["cls"], last[:, 0])
    torch.testing.assert_close(feats["registers"], last[:, 1:5])
    torch.testing.assert_close(feats["patches"], last[:, 5:].transpose(1, 2).reshape(1, 64, 2, 4))


def test_mean_std_from_preprocessor_config(tiny_dinov3_factory, tmp_path: Path) -> None:
    folder = tiny_dinov3_factory(mean=(0.3, 0.4, 0.5), std=(0.1, 0.2, 0.3), layers=4)
    enc = build_dinov3_encoder(pretrained_path=str(folder))
    torch.testing.assert_close(enc.pixel_mean.flatten(), torch.tensor([0.3, 0.4, 0.5]))
    torch.testing.assert_close(enc.pixel_std.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    assert "pixel_mean" not in enc.state_dict()  # non-persistent: checkpoints cannot disagree with the model
    bare = shutil.copytree(folder, tmp_path / "bare")
    (bare / "preprocessor_config.json").unlink()
    enc = build_dinov3_encoder(pretrained_path=str(bare))
    torch.testing.assert_close(enc.pixel_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_gated_mlp_variant_loads(tiny_dinov3_factory) -> None:
    """ViT-S+ / H+ / 7B differ from S / B / L only in config (SwiGLU MLP)."""
    enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3_factory(gated_mlp=True, layers=4)))
    assert [m.shape[1] for m in enc(torch.rand(1, 3, 32, 32))] == enc.out_channels


# -------------------------------------------------------------------- 2. frozen
def test_frozen_encoder_gets_no_gradient_and_stays_deterministic(tiny_dinov3: Path) -> None:
    enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3))
    head = nn.Conv2d(enc.out_channels[0], 1, 1)
    nn.ModuleDict({"enc": enc, "head": head}).train()
    assert not enc.trunk.training and enc.pyramid.training
    x = torch.rand(2, 3, 48, 64)
    grad_mode = []
    enc.trunk.blocks[-1].register_forward_hook(lambda m, a, o: grad_mode.append(torch.is_grad_enabled()))
    out = enc(x)
    assert grad_mode == [False]  # the trunk ran under no_grad
    head(out[0]).mean().backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.trunk.parameters())
    assert all(p.grad is not None for p in head.parameters())
    assert all(p.grad is not None for p in enc.pyramid.up4.parameters())
    a, b = enc.tapped_maps(x), enc.tapped_maps(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    # The same trunk left in train mode jitters its RoPE coordinates: what the override prevents.
    enc.trunk.model.train()
    torch.manual_seed(0)
    noisy = enc.tapped_maps(x)[3]
    assert (noisy - a[3]).norm() / a[3].norm() > 1e-4  # eval-mode repeats above were bit-identical


def test_trainable_blocks_train_only_the_last_blocks(tiny_dinov3: Path) -> None:
    enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3), trainable_blocks=2)
    trainable = {n for n, p in enc.trunk.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("model.model.layer.10.", "model.model.layer.11.", "model.norm.")) for n in trainable
    )
    recorded = {}
    for i in (0, 9, 10):
        enc.trunk.blocks[i].register_forward_hook(lambda m, a, o, i=i: recorded.update({i: _first(o).requires_grad}))
    sum(m.mean() for m in enc(torch.rand(1, 3, 32, 48))).backward()
    assert recorded == {0: False, 9: False, 10: True}  # autograd kept nothing of the frozen blocks
    for n, p in enc.trunk.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    assert not enc.trunk.training


def test_unfrozen_encoder_trains_everything(tiny_dinov3: Path) -> None:
    enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3), freeze=False, simple=True)
    sum(m.mean() for m in enc(torch.rand(1, 3, 32, 32))).backward()
    for n, p in enc.trunk.named_parameters():
        used = "mask_token" not in n  # masked-image pre-training only: frozen, or DDP would see it unused
        assert p.requires_grad == used and (p.grad is not None) == used, n


def test_state_dict_holds_only_parameters(tiny_dinov3: Path, timm_vit_pth: Path) -> None:
    """No persistent buffers: a checkpoint can drop the frozen trunk by requires_grad alone."""
    for enc in (
        build_dinov3_encoder(pretrained_path=str(tiny_dinov3)),
        build_dinov3_encoder(
            model_name=TIMM_VIT, pretrained_path=str(timm_vit_pth), backend="timm", timm_kwargs=TIMM_VIT_KW
        ),
    ):
        assert set(enc.state_dict()) == {n for n, _ in enc.named_parameters()}


# -------------------------------------------------------------------- 3. shapes, both backends
def test_timm_loads_meta_checkpoint_through_its_filter(timm_vit_pth: Path) -> None:
    enc = build_dinov3_encoder(
        model_name=TIMM_VIT, pretrained_path=str(timm_vit_pth), backend="timm", timm_kwargs=TIMM_VIT_KW
    )
    ref = torch.load(timm_vit_pth.with_suffix(".ref"))
    got = enc.trunk.model.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    x = torch.rand(1, 3, 32, 48)
    want = enc.trunk.model.forward_intermediates(
        (x - enc.pixel_mean) / enc.pixel_std, indices=[0, 1, 2, 3], norm=True, intermediates_only=True
    )
    for a, b in zip(enc.tapped_maps(x), want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("simple", [False, True])
@pytest.mark.parametrize("backend", ["hf", "timm"])
def test_output_shapes_320x480(tiny_dinov3: Path, timm_vit_pth: Path, backend: str, simple: bool) -> None:
    if backend == "hf":
        enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3), simple=simple)
    else:
        enc = build_dinov3_encoder(
            model_name=TIMM_VIT,
            pretrained_path=str(timm_vit_pth),
            backend="timm",
            simple=simple,
            timm_kwargs=TIMM_VIT_KW,
        )
    assert enc.strides == ([16] * 4 if simple else [4, 8, 16, 32])
    assert enc.patch_size == 16 and enc.embed_dim == 64
    with torch.no_grad():
        maps = enc(torch.rand(1, 3, 320, 480))
    assert [tuple(m.shape) for m in maps] == [(1, c, 320 // s, 480 // s) for c, s in zip(enc.out_channels, enc.strides)]
    assert all(m.dtype == torch.float32 for m in maps)


def test_timm_convnext_native_pyramid(timm_convnext_pth: Path) -> None:
    enc = build_dinov3_encoder(
        model_name=TIMM_CNX, pretrained_path=str(timm_convnext_pth), backend="timm", timm_kwargs=TIMM_CNX_KW
    )
    assert enc.strides == [4, 8, 16, 32] and enc.out_channels == [16, 32, 64, 128] and enc.patch_size == 32
    with torch.no_grad():
        maps = enc(torch.rand(1, 3, 320, 480))
        feats = enc.extract(torch.rand(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, c, 320 // s, 480 // s) for c, s in zip(enc.out_channels, enc.strides)]
    assert feats["cls"].shape == (1, 128) and feats["registers"].shape == (1, 0, 128)
    assert feats["patches"].shape == (1, 128, 2, 3)
    with pytest.raises(ValueError, match="apply to ViT trunks"):
        build_dinov3_encoder(
            model_name=TIMM_CNX,
            pretrained_path=str(timm_convnext_pth),
            backend="timm",
            simple=True,
            timm_kwargs=TIMM_CNX_KW,
        )


# -------------------------------------------------------------------- dtype
def test_bf16_weights_on_cpu_with_and_without_autocast(tiny_dinov3: Path) -> None:
    ref = build_dinov3_encoder(pretrained_path=str(tiny_dinov3), simple=True)
    enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3), simple=True, weights_dtype=torch.bfloat16)
    assert {p.dtype for p in ref.trunk.parameters()} == {torch.float32}  # the default
    assert {p.dtype for p in enc.trunk.parameters()} == {torch.bfloat16}
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        want = ref(x)
        plain = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = enc(x)
    assert all(m.dtype == torch.float32 for m in plain) and all(m.dtype == torch.bfloat16 for m in amp)
    for w, a, b in zip(want, plain, amp):
        assert (w - a).norm() / w.norm() < 0.05 and (w - b.float()).norm() / w.norm() < 0.05
    pyr = build_dinov3_encoder(pretrained_path=str(tiny_dinov3), weights_dtype=torch.bfloat16, trainable_blocks=1)
    out = pyr(x)  # fp32 pyramid and fp32 last block behind bf16 frozen blocks
    sum(m.mean() for m in out).backward()
    assert pyr.trunk.blocks[-1].mlp.up_proj.weight.dtype == torch.float32
    assert pyr.trunk.blocks[-1].mlp.up_proj.weight.grad is not None


# -------------------------------------------------------------------- 4. errors and helpers
def test_missing_weights_error_names_folder_hub_id_license_and_place(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as err:
        build_dinov3_encoder(model_name=HUB_ID, pretrained_path=missing)
    msg = str(err.value)
    for part in (missing, HUB_ID, "gated", "DINOv3 license", "checkpoint/dinov3-vitb16-pretrain-lvd1689m/"):
        assert part in msg
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_dinov3_encoder(model_name=TIMM_VIT, pretrained_path=str(tmp_path / "nowhere.pth"), backend="timm")
    with pytest.raises(FileNotFoundError, match="DINOv3 license"):
        read_architecture(HUB_ID, missing)


def test_old_transformers_error_names_version(tiny_dinov3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # sys.modules' entry, not the name imported above: transformers may re-register its lazy module.
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.55.4")
    with pytest.raises(ImportError, match=r"transformers 4\.55\.4 has no DINOv3.*>= 4\.56"):
        build_dinov3_encoder(pretrained_path=str(tiny_dinov3))


def test_layer_and_size_errors(tiny_dinov3: Path) -> None:
    with pytest.raises(ValueError, match=r"1\.\.12"):
        build_dinov3_encoder(pretrained_path=str(tiny_dinov3), layers=(3, 6, 9, 13))
    with pytest.raises(ValueError, match="count from 1"):
        build_dinov3_encoder(pretrained_path=str(tiny_dinov3), layers=(0, 6, 9, 12))
    with pytest.raises(ValueError, match="blocks 10..12 would train"):
        build_dinov3_encoder(pretrained_path=str(tiny_dinov3), layers=(3, 6, 8, 9), trainable_blocks=3)
    with pytest.raises(ValueError, match="freeze=True"):
        build_dinov3_encoder(pretrained_path=str(tiny_dinov3), freeze=False, trainable_blocks=2)
    enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3), simple=True)
    with pytest.raises(ValueError, match=r"350x480 is not a multiple of the encoder's patch size 16.*352x480"):
        enc(torch.rand(1, 3, 350, 480))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        enc(torch.rand(3, 32, 32))


def test_patch_size_and_default_layers(tiny_dinov3_factory, tiny_dinov3: Path) -> None:
    arch = read_architecture(HUB_ID, str(tiny_dinov3))
    assert (arch.family, arch.patch_size, arch.depth, arch.width, arch.registers) == ("dinov3_vit", 16, 12, 64, 4)
    assert read_architecture(HUB_ID, str(tiny_dinov3_factory(patch=8, layers=4))).patch_size == 8
    arch = read_architecture(TIMM_VIT, backend="timm")
    assert (arch.family, arch.patch_size, arch.depth, arch.width, arch.registers) == ("dinov3_vit", 16, 12, 768, 4)
    arch = read_architecture(TIMM_CNX, backend="timm")
    assert (arch.family, arch.patch_size, arch.depth, arch.registers) == ("dinov3_convnext", 32, 4, 0)
    assert default_layers(12) == (3, 6, 9, 12) and default_layers(24) == (6, 12, 18, 24)
    assert default_layers(40) == (10, 20, 30, 40) and default_layers(4) == (1, 2, 3, 4)
    enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3_factory(patch=8, layers=4)))
    assert enc.layers == (1, 2, 3, 4) and enc.strides == [2, 4, 8, 16]
    assert [tuple(m.shape[-2:]) for m in enc(torch.rand(1, 3, 32, 64))] == [(16, 32), (8, 16), (4, 8), (2, 4)]


def test_timm_errors(timm_convnext_pth: Path) -> None:
    with pytest.raises(ValueError, match="could not load .*convnext.pth.* into timm model 'vit_base_patch16_dinov3'"):
        build_dinov3_encoder(
            model_name=TIMM_VIT, pretrained_path=str(timm_convnext_pth), backend="timm", timm_kwargs=TIMM_VIT_KW
        )
    with pytest.raises(ValueError, match="has no model 'vit_nonexistent_dinov3'.*vit_base_patch16_dinov3"):
        build_dinov3_encoder(
            model_name="vit_nonexistent_dinov3", pretrained_path=str(timm_convnext_pth), backend="timm"
        )


def test_make_tiny_dinov3_cli(tmp_path: Path) -> None:
    from scripts.make_tiny_dinov3 import main

    main([str(tmp_path / "m"), "--hidden", "32", "--layers", "3", "--heads", "2", "--registers", "0", "--patch", "8"])
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert files >= {"config.json", "model.safetensors", "preprocessor_config.json"}
    model = AutoModel.from_pretrained(tmp_path / "m")
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_register_tokens, c.patch_size) == (32, 3, 0, 8)
    with pytest.raises(ValueError, match="divisible by 4 \\* --heads"):
        main([str(tmp_path / "bad"), "--hidden", "36", "--heads", "2"])


def test_weights_lacking_a_tensor_are_refused_not_filled_at_random(tiny_dinov3: Path, tmp_path: Path) -> None:
    """transformers would fill the gap with random values and only log it."""
    from safetensors.torch import load_file, save_file

    from encoders.loading import IncompleteWeights

    folder = tmp_path / "enc"
    shutil.copytree(tiny_dinov3, folder)
    tensors = load_file(folder / "model.safetensors")
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, folder / "model.safetensors", {"format": "pt"})
    with pytest.raises(IncompleteWeights, match=f"lacks 1 tensors of the encoder .*{dropped}"):
        build_dinov3_encoder(pretrained_path=str(folder), model_name="unused")
