"""Activation checkpointing (model.encoder*.activation_checkpointing): the same gradients, the blocks'
activations (adapters and LoRA included) not kept for backward, and nothing changed for a frozen trunk.

Memory is counted with ``torch.autograd.graph.saved_tensors_hooks``: the bytes of the distinct
storages autograd keeps for the backward pass (weights aside), exactly what checkpointing frees.
Tensors saved inside a checkpointed region go to the checkpoint's own hooks and are never kept.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from build import build_loss, build_model
from config import load_config
from dinov3_encoder import PyramidEncoder, build_dinov3_encoder
from encoders.adapters import Adapters, BlockAdapter
from encoders.hiera import TimmHiera
from encoders.lora import LoRA


@contextlib.contextmanager
def kept_for_backward(model: nn.Module, inside: tuple[type[nn.Module], ...] = ()):
    """Yields {"bytes": distinct non-weight storages saved for backward, "inside": how many tensors were
    saved while a module of a type in ``inside`` ran}."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    out = {"bytes": 0, "inside": 0}
    depth = [0]
    handles = []
    for m in model.modules():
        if isinstance(m, inside):
            handles.append(m.register_forward_pre_hook(lambda *_: depth.__setitem__(0, depth[0] + 1)))
            handles.append(m.register_forward_hook(lambda *_: depth.__setitem__(0, depth[0] - 1)))

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        out["inside"] += depth[0] > 0
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield out
    finally:
        for h in handles:
            h.remove()
        out["bytes"] = sum(seen.values())


def _unzero_adapters(model: nn.Module) -> None:
    """Adapters start as the identity (up = 0, scale 1e-3), where most of their gradients are zero:
    give every adapter weight a gradient worth comparing."""
    torch.manual_seed(3)
    for m in model.modules():
        if isinstance(m, BlockAdapter):
            nn.init.normal_(m.up.weight, std=0.2)
            m.scale.data.fill_(1.0)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _same_grads(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert want[name].abs().max() > 0, name  # the comparison means something
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5 * want[name].abs().max().item())


def test_dual_model_hiera_recomputes_with_its_adapters_same_gradients_far_less_memory(tiny_dinov3_factory, tiny_sam2):
    """configs/e2net_dual.yaml shrunk: a 6-block Hiera with an adapter after every block beside a tiny
    DINOv3, batch 2 at 64 px, with and without model.encoder2.activation_checkpointing."""
    dino = tiny_dinov3_factory(hidden=32, layers=4, heads=2)
    x, y = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    kept, grads = {}, {}
    state = None
    for on in (False, True):
        cfg = load_config(
            "configs/e2net_dual.yaml",
            [
                f"model.encoder.pretrained_path={dino}",
                "model.encoder.layers=[4]",
                "model.encoder.image_size=32",
                f"model.encoder2.pretrained_path={tiny_sam2}",
                "model.encoder2.image_size=0",
                f"model.encoder2.activation_checkpointing={str(on).lower()}",
                "model.channels=16",
                "model.context_heads=2",
                "data.image_size=64",
                "train.amp=off",
            ],
        )
        model = build_model(cfg).train()
        assert model.encoder.primary.recomputes is on and model.encoder.secondary.recomputes is False
        if state is None:
            _unzero_adapters(model)
            state = model.state_dict()
        model.load_state_dict(state)  # checkpointing renames nothing
        with kept_for_backward(model, (BlockAdapter,)) as counted:
            out = model(x)
            loss, _ = build_loss(cfg)(out, y)
        loss.backward()
        kept[on], grads[on] = counted, _grads(model)
    _same_grads(grads[True], grads[False])
    assert kept[True]["bytes"] <= 0.75 * kept[False]["bytes"], (kept[True]["bytes"], kept[False]["bytes"])
    # The adapters run inside the recomputed region: nothing they compute is kept.
    assert kept[False]["inside"] > 0 and kept[True]["inside"] == 0


def _timm_hiera() -> TimmHiera:
    import timm
    from test_hiera import TIMM_KW  # the tiny SAM2 architecture, spelled for timm

    torch.manual_seed(0)
    return TimmHiera(timm.create_model("sam2_hiera_tiny", pretrained=False, num_classes=0, **TIMM_KW).eval())


@pytest.mark.parametrize("family", ["timm_hiera", "hf_dinov3"])
def test_adapters_and_lora_are_recomputed_in_every_family_with_the_same_gradients(family, tiny_dinov3_factory) -> None:
    """timm's own mechanism (a Hiera) and the block-class one (a transformers DINOv3, with LoRA beside
    the adapters): the same gradients, and no adapter or LoRA activation kept."""
    from peft.tuners.lora import LoraLayer

    kept, grads, state = {}, {}, None
    for on in (False, True):
        kwargs = {"adapters": Adapters("all", reduction=4), "activation_checkpointing": on}
        if family == "timm_hiera":
            enc = PyramidEncoder(_timm_hiera(), mean=(0.5,) * 3, std=(0.25,) * 3, **kwargs)
            size = 64
        else:
            lora = LoRA(rank=4, dropout=0.0)
            dino = tiny_dinov3_factory(hidden=32, layers=4, heads=2)
            enc = build_dinov3_encoder(model_name="tiny", pretrained_path=str(dino), lora=lora, **kwargs)
            size = 32
        assert enc.recomputes is on
        if state is None:
            _unzero_adapters(enc)
            for n, p in enc.named_parameters():
                if "lora_B" in n:
                    nn.init.normal_(p, std=0.2)
            state = enc.state_dict()
        enc.load_state_dict(state)
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        with kept_for_backward(enc, (BlockAdapter, LoraLayer)) as counted:
            loss = sum((m**2).mean() for m in enc(x))
        loss.backward()
        kept[on], grads[on] = counted, _grads(enc)
    _same_grads(grads[True], grads[False])
    assert kept[False]["inside"] > 0 and kept[True]["inside"] == 0
    assert kept[True]["bytes"] <= 0.75 * kept[False]["bytes"]


def test_a_frozen_trunk_ignores_it_and_eval_runs_as_without(tiny_dinov3) -> None:
    frozen = build_dinov3_encoder(model_name="tiny", pretrained_path=str(tiny_dinov3), activation_checkpointing=True)
    assert frozen.recomputes is False
    assert all(type(b).__name__ == "DINOv3ViTLayer" for b in frozen.trunk.blocks)
    trained = build_dinov3_encoder(
        model_name="tiny", pretrained_path=str(tiny_dinov3), trainable_blocks=2, activation_checkpointing=True
    )
    assert trained.recomputes is True
    assert all(isinstance(b, type(frozen.trunk.blocks[0])) for b in trained.trunk.blocks)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # the same trunk weights; without grad mode a checkpointed block just runs
        for got, want in zip(trained.tapped_maps(x), frozen.tapped_maps(x)):
            torch.testing.assert_close(got, want)
