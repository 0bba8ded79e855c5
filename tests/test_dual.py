"""Two encoders in one network (a tiny SAM2 Hiera beside a tiny DINOv3, fused before CAEM): what
trains, exact resume, checkpoints without trunks, test.py and ONNX export, DDP, bf16 storage."""

from __future__ import annotations

import argparse

import pytest
import torch

from build import build_model, check_config
from config import load_config
from engine.checkpoint import load_checkpoint
from helpers import load_test_cli, run_train


@pytest.fixture(scope="module")
def dual_args(tmp_path_factory, tiny_dinov3_factory, tiny_sam2):
    """A seconds-long configs/e2net_dual.yaml: 6-block Hiera (widths 16-128) at 64 px with an adapter
    after every block; 4-block DINOv3 (width 32) at 32 px; images loaded at 64 px."""
    from scripts.make_synthetic_cod import generate

    data = tmp_path_factory.mktemp("synth")
    generate(data, n_train=12, n_test=0, size=64, seed=0)
    dino = tiny_dinov3_factory(hidden=32, layers=4, heads=2)
    return [
        "--config",
        "configs/e2net_dual.yaml",
        f"model.encoder.pretrained_path={dino}",
        "model.encoder.layers=[4]",
        "model.encoder.image_size=32",
        f"model.encoder2.pretrained_path={tiny_sam2}",
        "model.encoder2.image_size=64",
        "model.channels=16",
        "model.context_heads=2",
        f"data.root={data}",
        "data.image_size=64",
        "data.val_fraction=0.34",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.warmup_epochs=1",
        "train.deterministic=true",
        "train.lr=1e-2",
        "train.amp=off",
        "train.epochs=2",
    ]


def _cfg(dual_args, *overrides):
    return load_config(dual_args[1], [*dual_args[2:], *overrides])


def test_only_adapters_fusion_and_decoder_train_and_frozen_parts_keep_no_activations(dual_args) -> None:
    cfg = _cfg(dual_args, "model.encoder2.image_size=0")  # the Hiera sees the image as given
    assert check_config(cfg).family == "dinov3_vit"
    model = build_model(cfg).train()
    enc = model.encoder
    trainable = {n.split(".")[0] if not n.startswith("encoder.") else ".".join(n.split(".")[:2]) for n, p in
                 model.named_parameters() if p.requires_grad}  # fmt: skip
    assert trainable == {"encoder.primary", "encoder.fusion", "caem", "decoder"}
    adapters = {n: p for n, p in enc.primary.named_parameters() if p.requires_grad}
    assert all(".adapters." in n for n in adapters) and len(enc.primary.trunk.adapters) == 6
    # One adapter per Hiera block, each as wide as its block's output (16, 32, 32, 64, 64, 128).
    widths = [enc.primary.trunk.adapters[str(i)].norm.normalized_shape[0] for i in range(6)]
    assert widths == [16, 32, 32, 64, 64, 128]
    assert (enc.strides, enc.out_channels, enc.patch_size) == ([4, 8, 16, 32], [16] * 4, 32)
    x = torch.rand(2, 3, 64, 96)  # non-square; DINOv3 sees it resized to 32x32
    dino = enc.secondary(x)
    assert [tuple(m.shape) for m in dino] == [(2, 32, 2, 2)] and dino[0].grad_fn is None  # no_grad
    fused = enc(x)
    assert [tuple(f.shape) for f in fused] == [(2, 16, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert all(f.requires_grad for f in fused)
    assert [tuple(o.shape) for o in model(x)][-1] == (2, 1, 64, 96)

    # bf16 autocast: both trunks' frozen weights are stored in bf16, the trainable parts stay float32.
    bf16 = build_model(_cfg(dual_args, "model.encoder2.image_size=0", "train.amp=bf16"))
    frozen = [p for p in bf16.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in bf16.parameters() if p.requires_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert bf16(x)[-1].shape == (2, 1, 64, 96)

    # The published recipe's config is consistent and names Hiera-L and DINOv2-L (read on the meta device).
    arch = check_config(load_config("configs/sam2_unext.yaml"))
    assert (arch.family, arch.patch_size, arch.depth) == ("dinov2", 14, 24)


def test_dual_run_with_lora_resumes_exactly_and_is_scored_by_test_py(tmp_path, dual_args):
    """The recipe whose resume is proven bit for bit through train.py: LoRA on DINOv3, adapters on
    every Hiera block and the fusion all carry optimizer state (the other recipes' tests round-trip
    their training state in memory)."""
    args = [*dual_args, "model.encoder.lora.rank=4"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_train([*args, f"train.run_dir={straight}"]) == 0
    assert run_train([*args, f"train.run_dir={resumed}", "train.max_steps=2"]) == 0
    assert run_train([*args, f"train.run_dir={resumed}"]) == 0
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(resumed / "last.pth")
    assert (a["step"], b["step"]) == (4, 4) and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["metrics"] == b["metrics"]

    # No trunk weight in the checkpoint: of the encoders only the adapters, LoRA and the fusion are stored.
    encoder_keys = [k for k in a["model"] if k.startswith("encoder.")]
    assert not [k for k in encoder_keys if not (".adapters." in k or ".lora_" in k or k.startswith("encoder.fusion."))]
    assert any(".lora_B." in k and a["model"][k].abs().max() > 0 for k in encoder_keys)
    assert any(".adapters." in k and k.endswith(".up.weight") and a["model"][k].abs().max() > 0 for k in encoder_keys)

    # test.py --ckpt rebuilds both trunks from their folders and puts the trained weights back.
    cli = load_test_cli("e2net_test_cli_dual")
    ns = argparse.Namespace(ckpt=straight / "best.pth", config=None, overrides=["train.amp=off"], data_root=None)
    model = cli.load_model(ns).model
    best = load_checkpoint(straight / "best.pth")["model"]
    state = model.state_dict()
    assert all(torch.equal(state[k].cpu(), v) for k, v in best.items())
