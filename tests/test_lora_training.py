"""train.py and test.py with LoRA on a frozen tiny DINOv2: exact resume, small checkpoints, DDP."""

from __future__ import annotations

import argparse

import pytest
import torch

from engine.checkpoint import load_checkpoint
from helpers import load_test_cli, round_trips, run_train


@pytest.fixture(scope="module")
def lora_args(tmp_path_factory, tiny_dinov3_factory):
    """A seconds-long run: 4-block DINOv2 with 4 registers (patch 14), LoRA rank 4, 42-px images."""
    from scripts.make_synthetic_cod import generate

    data = tmp_path_factory.mktemp("synth")
    generate(data, n_train=12, n_test=0, size=48, seed=0)
    encoder = tiny_dinov3_factory(family="dinov2", hidden=32, layers=4, heads=2, registers=4, patch=14)
    return [
        "--config",
        "configs/e2net_dinov2.yaml",
        f"model.encoder.pretrained_path={encoder}",
        "model.encoder.layers=[1,2,3,4]",
        "model.encoder.lora.rank=4",
        "model.encoder.lora.dropout=0.1",
        "model.channels=16",
        "model.context_heads=2",
        f"data.root={data}",
        "data.image_size=42",
        "data.val_fraction=0.34",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.warmup_epochs=1",
        "train.deterministic=true",
        "train.lr=1e-2",
        "train.encoder_lr_scale=0.5",
        "train.amp=off",
        "train.epochs=2",
    ]


def test_lora_run_round_trips_and_its_checkpoint_holds_lora_and_decoder_only(tmp_path, lora_args):
    straight = tmp_path / "straight"
    assert run_train([*lora_args, f"train.run_dir={straight}"]) == 0
    round_trips(straight)  # the LoRA factors' optimizer state back in their groups
    a = load_checkpoint(straight / "last.pth")
    assert a["step"] == 4

    trunk_keys = [k for k in a["model"] if k.startswith("encoder.trunk.")]
    assert trunk_keys and all(".lora_A." in k or ".lora_B." in k for k in trunk_keys)
    assert any(a["model"][k].abs().max() > 0 for k in trunk_keys if ".lora_B." in k)  # B left zero: it trained
    lora_numel = sum(a["model"][k].numel() for k in trunk_keys)
    assert lora_numel == 4 * 4 * 4 * (32 + 32)  # 4 blocks x q/k/v/o x rank 4 x (32 in + 32 out)
    # The optimizer's LoRA groups learn at lr * encoder_lr_scale.
    groups = {g["name"]: g for g in a["optimizer"]["param_groups"]}
    assert groups["lora/decay"]["lr_scale"] == 0.5 and "pretrained/decay" not in groups

    # test.py --ckpt rebuilds the trunk from its folder and puts the LoRA weights back.
    cli = load_test_cli("e2net_test_cli_lora")
    ns = argparse.Namespace(ckpt=straight / "best.pth", config=None, overrides=["train.amp=off"], data_root=None)
    model = cli.load_model(ns).model
    best = load_checkpoint(straight / "best.pth")["model"]
    state = model.state_dict()
    assert all(torch.equal(state[k].cpu(), v) for k, v in best.items())
    assert len(model.encoder.lora_parameters()) == len(trunk_keys)


# LoRA and block adapters together under DDP: tests/test_dual.py (one torchrun run trains both kinds on
# DINOv3 and adapters on a SAM2 Hiera).
