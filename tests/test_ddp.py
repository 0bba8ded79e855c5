"""Two-process DDP on CPU (gloo) through torchrun, exactly as a user launches it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from build import build_loss, build_model
from config import ConfigError, load_config
from config_checks import check_keys
from engine import distributed
from engine.checkpoint import load_checkpoint
from engine.distributed import DistEnv, wrap_ddp
from helpers import tiny_model_args


def test_two_process_cpu_run(ddp_run):
    run = ddp_run.run
    log_text = (run / "train.log").read_text()
    assert "2 process(es) on cpu" in log_text
    # 8 training images over 2 ranks at batch 2: 2 optimizer steps per epoch, logged once (rank 0 only)
    assert log_text.count("epoch 1 step ") == 2 and log_text.count("epoch 2 validation") == 1
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    ckpt = load_checkpoint(run / "last.pth")
    assert (ckpt["epoch"], ckpt["step"]) == (2, 4)
    assert len(ckpt["rng"]) == 2  # both ranks' generators, for an exact resume
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert ckpt["metrics"]["n_images"] == 4  # validation sharded over the ranks, merged back whole
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved from the unwrapped model


def test_every_trainable_part_of_the_full_model_trained_under_ddp(ddp_run):
    """LoRA, both encoders' adapters, DINOv3's pyramid and the fusion were all in the reducer's
    buckets (a weight without a gradient stops the run), and best.pth follows the gathered training loss."""
    ckpt = load_checkpoint(ddp_run.run / "last.pth")
    keys = list(ckpt["model"])
    assert any(k.startswith("encoder.secondary.pyramid.") for k in keys)
    assert any(k.startswith("encoder.secondary.") and ".lora_B." in k for k in keys)
    assert any(k.startswith("encoder.fusion.") for k in keys)
    adapters = [k for k in keys if ".adapters." in k]
    # 4 DINOv3 blocks and 6 Hiera blocks, each adapter 5 tensors (norm 2, down, up, scale).
    assert sum(k.startswith("encoder.secondary.") for k in adapters) == 4 * 5
    assert sum(k.startswith("encoder.primary.") for k in adapters) == 6 * 5
    best = load_checkpoint(ddp_run.run / "best.pth")
    assert best["best"] == best["metrics"]["train_loss"] and best["best"] > 0


# ---- DDP around a frozen trunk (engine.distributed.wrap_ddp), in this process: a gloo group of one
@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield DistEnv(0, 1, 0, torch.device("cpu"), True)
    dist.destroy_process_group()


@pytest.mark.parametrize("static_graph", [False, True])
def test_ddp_holds_only_the_trainable_parameters(one_process_group, tiny_dinov3_factory, static_graph):
    """Frozen trunk weights are neither broadcast at start nor bucketed; LoRA and the block adapters
    are, and train (with DDP's static_graph too). Relies on DDP._set_params_and_buffers_to_ignore_for_model
    reaching DDP.parameters_to_ignore, which fails here if torch moves it."""
    _, recipe, *overrides = tiny_model_args(Path("data"), tiny_dinov3_factory(layers=4))
    adapted = ["model.encoder.lora.rank=2", "model.encoder.adapter.blocks=[1,3]", "train.amp=off"]
    cfg = load_config(recipe, [*overrides, *adapted])
    model = build_model(cfg)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and any("lora" in n for n in trainable) and any(".adapters." in n for n in trainable)
    net = wrap_ddp(model, one_process_group, static_graph=static_graph)
    assert net.parameters_to_ignore == frozen  # what DDP's start-up broadcast and its buckets skip

    names = {id(p): n for n, p in model.named_parameters()}
    bucketed = set()

    def record(group, bucket):
        bucketed.update(names[id(p)] for p in bucket.parameters())
        return allreduce_hook(group, bucket)

    net.register_comm_hook(None, record)
    x, y = torch.rand(2, 3, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    loss_fn = build_loss(cfg)
    for _ in range(2):
        loss_fn(net(x), y)[0].backward()
    assert bucketed == trainable
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)


def test_ranks_with_different_frozen_weights_are_refused(one_process_group, monkeypatch):
    monkeypatch.setattr(distributed, "all_gather_objects", lambda obj: [obj, "0123456789abcdef"])  # another rank's
    with pytest.raises(ConfigError, match="frozen weights differ between processes"):
        wrap_ddp(torch.nn.Linear(2, 2).requires_grad_(False), one_process_group)


def test_static_graph_is_refused_with_gradient_accumulation():
    with pytest.raises(ConfigError, match="train.ddp_static_graph"):
        check_keys(load_config(None, ["train.ddp_static_graph=true", "train.accum_steps=2"]))


def test_restarts_with_torchruns_shared_store_are_warned_of(monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in distributed.restart_store_problem()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # what TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives
    assert distributed.restart_store_problem() is None
