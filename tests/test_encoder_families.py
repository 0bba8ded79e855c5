"""DINOv2 (with and without registers) beside DINOv3, from transformers and timm, and LoRA on any of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from transformers import AutoModel

from dinov3_encoder import build_dinov3_encoder
from encoders.loading import read_architecture
from encoders.lora import LoRA

DINOV2 = {"family": "dinov2", "hidden": 32, "layers": 4, "heads": 2, "patch": 14}
TIMM_DINOV2_KW = {"embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 56}
TIMM_VIT = "vit_base_patch16_dinov3"
TIMM_VIT_KW = {"embed_dim": 64, "depth": 4, "num_heads": 2}


@pytest.fixture(scope="module", params=[0, 4], ids=["no-registers", "4-registers"])
def dinov2(request, tiny_dinov3_factory) -> Path:
    return tiny_dinov3_factory(**DINOV2, registers=request.param, mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3))


# -------------------------------------------------------------------- transformers DINOv2: fidelity
def test_dinov2_maps_are_hidden_states_after_the_final_norm_without_prefix_tokens(dinov2: Path) -> None:
    model = AutoModel.from_pretrained(dinov2).eval()
    R = getattr(model.config, "num_register_tokens", 0)
    enc = build_dinov3_encoder(pretrained_path=str(dinov2), layers=(1, 2, 3, 4), simple=True)
    assert (enc.patch_size, enc.num_registers, enc.embed_dim) == (14, R, 32)
    torch.testing.assert_close(enc.pixel_mean.flatten(), torch.tensor([0.3, 0.4, 0.5]))  # preprocessor_config.json
    x = torch.rand(2, 3, 224, 308)  # 16 x 22 patches: position embeddings interpolated to a non-square grid
    with torch.no_grad():
        out = model((x - enc.pixel_mean) / enc.pixel_std, output_hidden_states=True)
        maps = enc(x)
        feats = enc.extract(x)
    assert out.hidden_states[0].shape[1] == 1 + R + 16 * 22
    for i, got in enumerate(maps, start=1):
        want = model.layernorm(out.hidden_states[i])[:, 1 + R :].transpose(1, 2).reshape(2, 32, 16, 22)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(maps[0], maps[1], atol=1e-2)
    last = out.last_hidden_state
    torch.testing.assert_close(feats["cls"], last[:, 0])
    torch.testing.assert_close(feats["registers"], last[:, 1 : 1 + R])
    torch.testing.assert_close(feats["patches"], maps[3])


def test_dinov2_architecture_and_size_errors(dinov2: Path) -> None:
    arch = read_architecture("facebook/dinov2-base", str(dinov2))
    R = AutoModel.from_pretrained(dinov2).config.to_dict().get("num_register_tokens", 0)
    assert (arch.patch_size, arch.depth, arch.width, arch.registers) == (14, 4, 32, R)
    assert arch.family == ("dinov2_with_registers" if R else "dinov2")
    enc = build_dinov3_encoder(pretrained_path=str(dinov2))
    assert enc.strides == [3.5, 7, 14, 28]
    with torch.no_grad():
        maps = enc(torch.rand(1, 3, 56, 84))
    assert [tuple(m.shape[-2:]) for m in maps] == [(56 / s, 84 / s) for s in enc.strides]
    with pytest.raises(ValueError, match=r"384x384 is not a multiple of the encoder's patch size 14.*378x378"):
        enc(torch.rand(1, 3, 384, 384))


def test_dinov2_config_sizes_follow_the_patch(dinov2: Path) -> None:
    from config import ConfigError, load_config
    from encoders.checks import check_encoder

    tiny = [f"model.encoder.pretrained_path={dinov2}", "model.encoder.layers=[]"]  # 4 blocks, not ViT-B's 12
    cfg = load_config("configs/e2net_dinov2.yaml", tiny)
    assert cfg.data.image_size == 392 and check_encoder(cfg).patch_size == 14
    cfg = load_config("configs/e2net_dinov2.yaml", [*tiny, "data.image_size=384"])
    with pytest.raises(ConfigError, match=r"data\.image_size.*384 is not a multiple of .* 14 \(try 378 or 392\)"):
        check_encoder(cfg)


def test_unsupported_family_names_the_supported_ones(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path / "vit")
    for call in (
        lambda: build_dinov3_encoder(pretrained_path=str(tmp_path / "vit")),
        lambda: read_architecture("x", str(tmp_path / "vit")),
    ):
        with pytest.raises(ValueError, match=r"'vit' model, not a supported family; supported: .*dinov3_vit.*dinov2"):
            call()


# -------------------------------------------------------------------- timm DINOv2 and Meta's .pth files
def _meta_dinov2_pth(folder: Path, name: str) -> Path:
    """A tiny timm DINOv2 saved the way Meta's dinov2_vit*14[_reg4]_pretrain.pth are (mask_token,
    register_tokens, the CLS position inside pos_embed); timm's own weights sit beside it as ``.ref``."""
    model = timm.create_model(name, pretrained=False, num_classes=0, **TIMM_DINOV2_KW)
    sd = dict(model.state_dict())
    if "reg_token" in sd:  # timm folds Meta's CLS position embedding into cls_token: keep it 0 here
        sd["register_tokens"] = sd.pop("reg_token")
        sd["pos_embed"] = torch.cat([torch.zeros_like(sd["pos_embed"][:, :1]), sd["pos_embed"]], dim=1)
    sd["mask_token"] = torch.zeros(1, TIMM_DINOV2_KW["embed_dim"])
    path = folder / f"{name}.pth"
    torch.save(sd, path)
    torch.save(model.state_dict(), path.with_suffix(".ref"))
    return path


@pytest.mark.parametrize("name", ["vit_base_patch14_dinov2", "vit_base_patch14_reg4_dinov2"])
def test_timm_dinov2_loads_meta_pth_through_its_filter(tmp_path: Path, name: str) -> None:
    path = _meta_dinov2_pth(tmp_path, name)
    enc = build_dinov3_encoder(
        model_name=name, pretrained_path=str(path), backend="timm", timm_kwargs=TIMM_DINOV2_KW, simple=True
    )
    ref = torch.load(path.with_suffix(".ref"))
    got = enc.trunk.model.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert enc.trunk.family == ("dinov2_with_registers" if "reg4" in name else "dinov2")
    assert enc.num_registers == (4 if "reg4" in name else 0) and enc.patch_size == 14
    x = torch.rand(1, 3, 224, 308)
    with torch.no_grad():
        maps = enc(x)
        tokens = enc.trunk.model.forward_features((x - enc.pixel_mean) / enc.pixel_std)
    assert [tuple(m.shape) for m in maps] == [(1, 32, 16, 22)] * 4
    want = tokens[:, 1 + enc.num_registers :].transpose(1, 2).reshape(1, 32, 16, 22)
    torch.testing.assert_close(maps[3], want)  # the last block after the final norm, prefix tokens dropped
    arch = read_architecture(name, backend="timm")
    assert (arch.family, arch.patch_size, arch.registers) == (enc.trunk.family, 14, enc.num_registers)


# -------------------------------------------------------------------- LoRA
def _encoders(kind: str, folder_factory, tmp_path: Path):
    """(plain, with LoRA rank 4) encoders of one trunk, same weights."""
    if kind == "timm-dinov3":
        path = tmp_path / "vit.pth"
        arch = {**TIMM_VIT_KW, "init_values": 1.0}  # layer scale 1, not 1e-5: random blocks that matter
        torch.save(timm.create_model(TIMM_VIT, pretrained=False, num_classes=0, **arch).state_dict(), path)
        kw = {"model_name": TIMM_VIT, "pretrained_path": str(path), "backend": "timm", "timm_kwargs": arch}
    else:
        folder = folder_factory(**DINOV2, registers=4) if kind == "hf-dinov2" else folder_factory(layers=4)
        kw = {"pretrained_path": str(folder)}
    return build_dinov3_encoder(**kw), build_dinov3_encoder(**kw, lora=LoRA(rank=4, alpha=8.0))


@pytest.mark.parametrize("kind", ["hf-dinov3", "hf-dinov2", "timm-dinov3"])
def test_lora_changes_nothing_before_the_first_step_and_something_after(tiny_dinov3_factory, tmp_path, kind) -> None:
    plain, enc = _encoders(kind, tiny_dinov3_factory, tmp_path)
    p = enc.patch_size
    x = torch.rand(2, 3, 4 * p, 6 * p)
    lora = enc.lora_parameters()
    trainable = [n for n, q in enc.trunk.named_parameters() if q.requires_grad]
    assert lora and all(".lora_" in n for n in trainable) and len(trainable) == len(lora)
    assert all("attn" in n or "attention" in n for n in trainable)  # the default: attention projections
    base = {n: q.clone() for n, q in enc.trunk.named_parameters() if not q.requires_grad}
    with torch.no_grad():
        before, ref = enc.tapped_maps(x), plain.tapped_maps(x)
    for a, b in zip(before, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    opt = torch.optim.SGD(lora, lr=0.5)
    sum((m**2).mean() for m in enc(x)).backward()
    assert all(q.grad is not None for q in lora)
    opt.step()
    with torch.no_grad():
        after = enc.tapped_maps(x)
    assert (after[3] - before[3]).abs().max() > 1e-4
    assert all(torch.equal(q, base[n]) for n, q in enc.trunk.named_parameters() if n in base)  # trunk untouched


def test_lora_targets_errors_and_scope(tiny_dinov3_factory) -> None:
    folder = str(tiny_dinov3_factory(layers=4))
    with pytest.raises(ValueError, match=r"\['qkv'\] match no layer.*attention\.q_proj.*mlp\.up_proj"):
        build_dinov3_encoder(pretrained_path=folder, lora=LoRA(rank=2, targets=("q_proj", "qkv")))
    with pytest.raises(ValueError, match="LoRA adapts a frozen trunk"):
        build_dinov3_encoder(pretrained_path=folder, trainable_blocks=1, lora=LoRA(rank=2))
    enc = build_dinov3_encoder(pretrained_path=folder, layers=(1, 2, 2, 3), lora=LoRA(rank=2, targets=("mlp.up_proj",)))
    adapted = {n.split(".lora_")[0] for n, _ in enc.trunk.named_parameters() if ".lora_" in n}
    # Block 4 comes after the last tapped block: an adapter there would never get a gradient.
    assert adapted == {f"model.model.layer.{i}.mlp.up_proj" for i in range(3)}
    assert build_dinov3_encoder(pretrained_path=folder, lora=LoRA(rank=0)).lora_parameters() == []


def test_lora_dropout_follows_the_parent_mode_while_the_trunk_stays_in_eval(tiny_dinov3_factory) -> None:
    enc = build_dinov3_encoder(pretrained_path=str(tiny_dinov3_factory(layers=4)), lora=LoRA(rank=2, dropout=0.5))
    dropouts = [m for n, m in enc.trunk.named_modules() if n.endswith("lora_dropout.default")]
    assert dropouts
    enc.train()
    assert not enc.trunk.model.training and all(m.training for m in dropouts)
    enc.eval()
    assert not any(m.training for m in dropouts)


def test_model_info_counts_lora_on_its_own_line(tiny_dinov3_factory, capsys) -> None:
    from scripts.model_info import main

    folder = tiny_dinov3_factory(**DINOV2, registers=4)
    common = ["--config", "configs/e2net_dinov2.yaml", f"model.encoder.pretrained_path={folder}"]
    common += ["model.encoder.layers=[]", "model.channels=16", "model.context_heads=2", "data.image_size=56"]
    rows = {}
    for rank in (0, 8):
        main([*common, f"model.encoder.lora.rank={rank}"])
        out = capsys.readouterr().out
        rows[rank] = {line[:38].strip(): line[38:].split()[0] for line in out.splitlines() if len(line) > 38}
        assert "input: 1x3x56x56" in out  # data.image_size, not a fixed default
    assert float(rows[0]["LoRA adapters (M)"]) == 0
    lora = 4 * 4 * 8 * (32 + 32) / 1e6  # 4 blocks x q/k/v/o x rank 8 x (32 in + 32 out)
    assert float(rows[8]["LoRA adapters (M)"]) == pytest.approx(lora, abs=5e-4)
    assert float(rows[8]["trainable params (M)"]) == pytest.approx(
        float(rows[0]["trainable params (M)"]) + lora, abs=0.01
    )


def test_weight_loading_draws_no_progress_bar_into_a_redirected_log(tiny_dinov3_factory, capfd) -> None:
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    build_dinov3_encoder(pretrained_path=str(tiny_dinov3_factory(layers=4)))  # stderr is captured: not a terminal
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the global switch is left as it was
