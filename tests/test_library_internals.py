"""What the trunks rely on in transformers, timm and peft beyond a plain forward.

requirements.txt pins transformers and timm below the next releases this suite has not run
against; when a newer one moves any of these, this file fails first, naming what moved.
"""

from __future__ import annotations

import inspect

import pytest
import timm
import torch
from transformers import AutoModel

from encoders.trunks import HF_FAMILIES, HFViT, TimmConvNeXt, TimmViT

TINY = {"hidden": 32, "layers": 2, "heads": 2}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"family": "dinov3", "registers": 4},
        {"family": "dinov2", "patch": 14},
        {"family": "dinov2", "patch": 14, "registers": 4},
    ],
    ids=["dinov3_vit", "dinov2", "dinov2_with_registers"],
)
def test_transformers_layout(tiny_dinov3_factory, kwargs) -> None:
    model = AutoModel.from_pretrained(tiny_dinov3_factory(**TINY, **kwargs)).eval()
    assert model.config.model_type in HF_FAMILIES
    trunk = HFViT(model)
    # The block list, the final norm and the default LoRA targets live where the trunk looks.
    assert len(trunk.blocks) == trunk.depth == 2 and isinstance(trunk.norm, torch.nn.LayerNorm)
    names = {n for n, _ in trunk.blocks[0].named_modules()}
    assert set(trunk.lora_targets) <= names, sorted(names)
    # hidden_states: the embeddings, then every block, before the final norm; tokens CLS, registers, patches.
    p = trunk.patch_size
    x = torch.rand(1, 3, 2 * p, 3 * p)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    assert len(out.hidden_states) == trunk.depth + 1
    assert out.hidden_states[0].shape[1] == 1 + trunk.num_registers + 6
    torch.testing.assert_close(trunk.norm(out.hidden_states[-1]), out.last_hidden_state)
    assert [n for n, _ in model.named_parameters() if n.endswith("mask_token")]  # never_trained() finds it


def test_timm_layout() -> None:
    for name, kw in (
        ("vit_base_patch16_dinov3", {"embed_dim": 32, "depth": 2, "num_heads": 2}),
        ("vit_base_patch14_reg4_dinov2", {"embed_dim": 32, "depth": 2, "num_heads": 2, "dynamic_img_size": True}),
    ):
        model = timm.create_model(name, pretrained=False, num_classes=0, **kw)
        trunk = TimmViT(model, "x")
        assert len(trunk.blocks) == 2 and trunk.norm is model.norm and model.patch_embed.proj.weight.ndim == 4
        assert set(trunk.lora_targets) <= {n for n, _ in trunk.blocks[0].named_modules()}
        assert model.num_prefix_tokens == 5
    cnx = timm.create_model("convnext_tiny.dinov3_lvd1689m", pretrained=False, num_classes=0, depths=(1, 1, 1, 1))
    trunk = TimmConvNeXt(cnx)
    assert len(trunk.blocks) == 4 and [f["reduction"] for f in cnx.feature_info] == [4, 8, 16, 32]
    assert set(trunk.lora_targets) <= {
        n for n, _ in trunk.blocks[0].named_modules() for n in [n.split("blocks.0.")[-1]]
    }
    for cls in (type(model), type(cnx), timm.models.eva.Eva):
        params = inspect.signature(cls.forward_intermediates).parameters
        assert {"indices", "norm", "stop_early", "output_fmt", "intermediates_only"} <= set(params), cls


def test_timm_reads_meta_dinov2_checkpoints() -> None:
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = timm.create_model("vit_base_patch14_reg4_dinov2", pretrained=False, embed_dim=32, depth=1, num_heads=2)
    sd = {k: v for k, v in model.state_dict().items() if k != "reg_token"}
    sd["register_tokens"], sd["mask_token"] = model.reg_token, torch.zeros(1, 32)
    sd["pos_embed"] = torch.cat([torch.zeros(1, 1, 32), sd["pos_embed"]], dim=1)  # Meta keeps the CLS position
    assert set(checkpoint_filter_fn(sd, model)) == set(model.state_dict())


def test_peft_injects_into_a_plain_module() -> None:
    from peft import LoraConfig, inject_adapter_in_model

    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["0"]), net)
    names = [n for n, _ in net.named_parameters()]
    assert "0.lora_A.default.weight" in names and "0.lora_B.default.weight" in names
    assert torch.count_nonzero(net[0].lora_B.default.weight) == 0  # B starts at zero
