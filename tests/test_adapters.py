"""Bottleneck adapters on frozen tiny trunks of every ViT family, and the projected pyramid."""

from __future__ import annotations

import pytest
import timm
import torch
from transformers import AutoModel

from encoders.adapters import BlockAdapter, adapter_parameters, add_adapters, is_adapter
from encoders.loading import load_trunk
from encoders.lora import LoRA, add_lora
from encoders.pyramids import ProjectedPyramid
from encoders.trunks import Family, TimmConvNeXt, TimmViT, Trunk

TINY = {"hidden": 32, "layers": 4, "heads": 2}
TIMM_KW = {"embed_dim": 32, "depth": 4, "num_heads": 2}
KINDS = ["hf-dinov3", "hf-dinov2-registers", "timm-dinov3", "timm-dinov2"]


def _trunk(kind: str, factory) -> Trunk:
    """A frozen tiny trunk in eval mode; random layer scales of 1 so that every block matters."""
    if kind.startswith("hf"):
        kw = {"family": "dinov2", "patch": 14, "registers": 4} if "dinov2" in kind else {}
        trunk = load_trunk("unused", str(factory(**TINY, **kw)))[0]
    elif kind == "timm-dinov3":
        trunk = TimmViT(timm.create_model("vit_base_patch16_dinov3", num_classes=0, init_values=1.0, **TIMM_KW), "x")
    else:
        model = timm.create_model(
            "vit_base_patch14_dinov2", num_classes=0, init_values=1.0, img_size=56, dynamic_img_size=True, **TIMM_KW
        )
        trunk = TimmViT(model, Family.dinov2)
    return trunk.requires_grad_(False).eval()


def _input(trunk: Trunk) -> torch.Tensor:
    p = trunk.patch_size
    return torch.randn(2, 3, 3 * p, 4 * p, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", KINDS)
def test_no_op_before_the_first_step_then_only_adapters_learn(tiny_dinov3_factory, kind: str) -> None:
    trunk = _trunk(kind, tiny_dinov3_factory)
    x, taps = _input(trunk), (1, 2, 3, 4)
    with torch.no_grad():
        before = trunk(x, taps)  # transformers installs its output-recording hooks here, before ours
    frozen = {n: p.clone() for n, p in trunk.named_parameters()}
    # init_scale 1, not 1e-3: the first step's change stays far above float32 rounding.
    params = add_adapters(trunk, "all", reduction=4, init_scale=1.0)
    names = [n for n, p in trunk.named_parameters() if p.requires_grad]
    assert len(params) == 4 * 5 and len(names) == len(params) and all(is_adapter(n) for n in names)
    assert adapter_parameters(trunk) == params and all(p.dtype == torch.float32 for p in params)
    adapter = trunk.adapters["0"]
    assert adapter.down.weight.shape == (32, 32)  # max(32 // 4, 32): the bottleneck never narrows below 32
    assert adapter.up.weight.abs().sum() == 0 and adapter.scale.item() == 1.0

    with torch.no_grad():
        for a, b in zip(trunk(x, taps), before):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # exactly the frozen trunk

    opt = torch.optim.AdamW(params, lr=1e-2)
    sum((m**2).mean() for m in trunk(x, taps)).backward()
    assert all(p.grad is None for n, p in trunk.named_parameters() if not is_adapter(n))
    assert all(a.up.weight.grad.abs().sum() > 0 for a in trunk.adapters.values())
    opt.step()
    with torch.no_grad():
        after = trunk(x, taps)
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(after, before))
    assert all(torch.equal(p, frozen[n]) for n, p in trunk.named_parameters() if n in frozen)


@pytest.mark.parametrize("kind", ["hf-dinov3", "hf-dinov2-registers"])
def test_hidden_states_carry_the_adapted_output_into_the_next_block(tiny_dinov3_factory, kind: str) -> None:
    trunk = _trunk(kind, tiny_dinov3_factory)
    x = _input(trunk)
    with torch.no_grad():
        ref = trunk.model(pixel_values=x, output_hidden_states=True).hidden_states
        add_adapters(trunk, [1])
        adapter = trunk.adapters["1"]
        adapter.up.weight.normal_()
        got = trunk.model(pixel_values=x, output_hidden_states=True)
        for i in (0, 1):
            torch.testing.assert_close(got.hidden_states[i], ref[i], rtol=0, atol=0)
        torch.testing.assert_close(got.hidden_states[2], adapter(ref[2]))  # the tapped state: block 1 + adapter
        assert (got.hidden_states[3] - ref[3]).abs().max() > 1e-3  # block 2 read the adapted tokens
        torch.testing.assert_close(trunk.norm(got.hidden_states[-1]), got.last_hidden_state)
    # A fresh model that had never recorded hidden states before the adapters were attached.
    fresh = _trunk(kind, tiny_dinov3_factory)
    add_adapters(fresh, [1])
    fresh.adapters.load_state_dict(trunk.adapters.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            fresh.model(pixel_values=x, output_hidden_states=True).hidden_states[2], got.hidden_states[2]
        )


def test_block_indices_are_checked(tiny_dinov3_factory) -> None:
    trunk = _trunk("hf-dinov3", tiny_dinov3_factory)
    with pytest.raises(ValueError, match=r"\[4, 7\] are not blocks of this 4-block trunk: valid indices are 0\.\.3"):
        add_adapters(trunk, [0, 4, 7])
    with pytest.raises(ValueError, match=r"\[3\] come after the last tapped block .*use indices 0\.\.2"):
        add_adapters(trunk, [1, 3], usable=3)
    with pytest.raises(ValueError, match="list of block indices or 'all'"):
        add_adapters(trunk, "some")
    assert add_adapters(trunk, []) == [] and not hasattr(trunk, "adapters")
    add_adapters(trunk, "all", usable=3)
    assert sorted(trunk.adapters) == ["0", "1", "2"]
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(trunk, [0])
    cnx = timm.create_model("convnext_tiny", num_classes=0, depths=(1, 1, 1, 1), dims=(8, 8, 8, 8))
    with pytest.raises(ValueError, match="dinov3_convnext trunk has none"):
        add_adapters(TimmConvNeXt(cnx), "all")


def test_bf16_frozen_trunk_keeps_float32_adapters(tiny_dinov3_factory) -> None:
    trunk = _trunk("hf-dinov3", tiny_dinov3_factory).to(torch.bfloat16)
    x = _input(trunk)
    with torch.no_grad():
        before = trunk(x, (2, 4))
    params = add_adapters(trunk, "all")
    assert all(p.dtype == torch.float32 for p in params)
    with torch.no_grad():
        for a, b in zip(trunk(x, (2, 4)), before):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    maps = trunk(x, (2, 4))  # no autocast: bf16 blocks read bf16, the adapters compute in float32
    assert maps[0].dtype == torch.bfloat16
    sum(m.float().square().mean() for m in maps).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_adapters_and_lora_together(tiny_dinov3_factory) -> None:
    trunk = _trunk("hf-dinov3", tiny_dinov3_factory)
    x = _input(trunk)
    with torch.no_grad():
        before = trunk(x, (2, 4))
    lora = add_lora(trunk, LoRA(rank=2), n_blocks=4)
    adapters = add_adapters(trunk, "all")
    assert lora and adapters and not {id(p) for p in lora} & {id(p) for p in adapters}
    names = [n for n, p in trunk.named_parameters() if p.requires_grad]
    assert {n for n in names if ".lora_" in n} | {n for n in names if is_adapter(n)} == set(names)
    assert not any(".lora_" in n and is_adapter(n) for n in names)  # LoRA never adapts an adapter
    with torch.no_grad():
        for a, b in zip(trunk(x, (2, 4)), before):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    opt = torch.optim.AdamW([*lora, *adapters], lr=1e-2)
    sum(m.square().mean() for m in trunk(x, (2, 4))).backward()
    lora_b = [p for n, p in trunk.named_parameters() if ".lora_B." in n]
    assert all(p.grad.abs().sum() > 0 for p in lora_b)
    assert all(a.up.weight.grad.abs().sum() > 0 for a in trunk.adapters.values())
    opt.step()
    with torch.no_grad():
        assert (trunk(x, (2, 4))[1] - before[1]).abs().max() > 1e-4


def test_torch_compile_traces_the_adapters_in_one_graph(tiny_dinov3_factory) -> None:
    trunk = load_trunk("unused", str(tiny_dinov3_factory(**{**TINY, "layers": 1})))[0].requires_grad_(False).eval()
    add_adapters(trunk, "all")
    with torch.no_grad():
        trunk.adapters["0"].up.weight.normal_()
    x = _input(trunk)
    want = trunk(x, (1,))  # eager first: transformers installs its hooks outside the compiled graph
    torch._dynamo.reset()
    got = torch.compile(trunk, backend="eager", fullgraph=True)(x, (1,))
    torch.testing.assert_close(got[0], want[0])
    got[0].square().mean().backward()
    assert trunk.adapters["0"].up.weight.grad.abs().sum() > 0


def test_adapter_keeps_a_tuple_output_a_tuple() -> None:
    adapter = BlockAdapter(8, reduction=2)
    assert adapter.scale.item() == pytest.approx(1e-3)  # the published default
    adapter.up.weight.data.fill_(1.0)
    tokens, extra = torch.randn(1, 5, 8), torch.ones(3)
    out = adapter.after_block(None, (), (tokens, extra))
    assert isinstance(out, tuple) and out[1] is extra and torch.equal(out[0], adapter(tokens))
    assert adapter.down.out_features == 32  # max(8 // 2, 32)


def test_projected_pyramid_projects_each_level_then_resizes() -> None:
    torch.manual_seed(0)
    pyramid = ProjectedPyramid(64)
    assert pyramid.out_channels == [16, 32, 64, 64]
    maps = [torch.randn(2, 64, 3, 5) for _ in range(4)]  # an odd grid: the coarsest level keeps its last row
    out = pyramid(maps)
    assert [tuple(o.shape) for o in out] == [(2, 16, 12, 20), (2, 32, 6, 10), (2, 64, 3, 5), (2, 64, 2, 3)]
    level = pyramid.proj[2]
    want = torch.nn.functional.gelu(level[1](level[0](maps[2].permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
    torch.testing.assert_close(out[2], want)  # Linear -> LayerNorm -> GELU over channels, no resize at stride p
    assert out[2].is_contiguous()
    even = [torch.randn(1, 64, 4, 6) for _ in range(4)]
    level = pyramid.proj[3]
    projected = torch.nn.functional.gelu(level[1](level[0](even[3].permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
    halved = torch.nn.functional.interpolate(projected, size=(2, 3), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pyramid(even)[3], halved)  # on an even grid: a bilinear resize by 1/2
    sum(o.mean() for o in out).backward()
    assert all(p.grad is not None for p in pyramid.parameters())


def test_model_layouts_the_adapters_rely_on(tiny_dinov3_factory) -> None:
    """A forward hook on a transformers layer replaces what the encoder loop and the
    hidden-state recorder see (fails if transformers stops running module hooks on its layers)."""
    model = AutoModel.from_pretrained(tiny_dinov3_factory(**TINY)).eval()
    layer = model.model.layer[0]
    layer.register_forward_hook(lambda m, a, out: torch.zeros_like(out), prepend=True)
    with torch.no_grad():
        out = model(pixel_values=torch.rand(1, 3, 32, 32), output_hidden_states=True)
    assert out.hidden_states[1].abs().max() == 0
