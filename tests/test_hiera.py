"""SAM2 Hiera trunks (transformers and timm) and the fusion of two pyramids, on tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from encoders.hiera import is_hiera, load_hiera, read_hiera_architecture
from helpers import ROOT
from models.fusion import PyramidFusion, fusion_sources
from scripts.make_tiny_sam2 import make_tiny_sam2

# The architecture make_tiny_sam2 writes by default, spelled for timm's HieraDet.
TIMM_KW = {
    "embed_dim": 16,
    "num_heads": 1,
    "stages": (1, 2, 2, 1),
    "window_spec": (8, 4, 4, 2),
    "global_att_blocks": (4,),
    "global_pos_size": (4, 4),
}
SIZES = [(64, 96), (96, 32)]  # non-square, multiples of 32


@pytest.fixture(scope="module")
def sam2(tmp_path_factory) -> Path:
    """A whole tiny Sam2Model folder, as facebook/sam2.1-hiera-* snapshots are."""
    return make_tiny_sam2(tmp_path_factory.mktemp("sam2"))


def _meta_pt(sam2: Path, path: Path) -> Path:
    """The tiny trunk's weights in Meta's sam2 .pt layout (image_encoder.trunk.*, mlp.layers.N), among
    other SAM2 tensors that a trunk must ignore."""
    from transformers import Sam2Model

    renames = {
        "patch_embed.projection": "patch_embed.proj",
        "layer_norm1": "norm1",
        "layer_norm2": "norm2",
        "mlp.proj_in": "mlp.layers.0",
        "mlp.proj_out": "mlp.layers.1",
    }
    state = {}
    for k, v in Sam2Model.from_pretrained(sam2).vision_encoder.backbone.state_dict().items():
        for old, new in renames.items():
            k = k.replace(old, new)
        state[f"image_encoder.trunk.{k}"] = v
    state["image_encoder.neck.convs.0.conv.weight"] = torch.zeros(32, 128, 1, 1)
    state["sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    torch.save({"model": state}, path)
    return path


def test_hf_trunk_from_a_whole_sam2_checkpoint_is_its_vision_backbone(sam2: Path) -> None:
    from transformers import Sam2Model

    backbone = Sam2Model.from_pretrained(sam2).vision_encoder.backbone.eval()
    trunk, mean, std = load_hiera("facebook/sam2.1-hiera-tiny", str(sam2))
    ref = backbone.state_dict()
    got = trunk.model.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert (tuple(mean), tuple(std)) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (trunk.pyramid_taps, trunk.depth, trunk.patch_size) == ((1, 3, 5, 6), 6, 32)
    assert is_hiera("facebook/sam2.1-hiera-tiny", str(sam2), "hf")
    arch = read_hiera_architecture("x", str(sam2))
    assert (arch.family, arch.patch_size, arch.depth, arch.width) == ("sam2_hiera", 32, 6, 128)
    for H, W in SIZES:
        x = torch.randn(2, 3, H, W)
        with torch.no_grad():
            maps = trunk(x, trunk.pyramid_taps)
            out = backbone(pixel_values=x, output_hidden_states=True)
            other = trunk(x, [2, 4, 6])  # taps inside stages read the per-block hidden states
        assert [tuple(m.shape) for m in maps] == [(2, 16 * 2**s, H // 4 // 2**s, W // 4 // 2**s) for s in range(4)]
        for m, want in zip(maps, out.intermediate_hidden_states):
            torch.testing.assert_close(m, want.permute(0, 3, 1, 2), rtol=0, atol=0)
        for t, m in zip([2, 4, 6], other):
            torch.testing.assert_close(m, out.hidden_states[t].permute(0, 3, 1, 2), rtol=0, atol=0)
        assert trunk.tap_shapes([2, 4, 6]) == ([32, 64, 128], [8, 16, 32])


def test_timm_trunk_loads_meta_pt_and_computes_what_transformers_computes(sam2: Path, tmp_path: Path) -> None:
    pt = _meta_pt(sam2, tmp_path / "sam2.1_hiera_tiny.pt")
    timm_trunk, mean, std = load_hiera("sam2_hiera_tiny", str(pt), "timm", TIMM_KW)
    hf_trunk, *_ = load_hiera("x", str(sam2))
    assert (timm_trunk.pyramid_taps, timm_trunk.widths, timm_trunk.strides) == (
        hf_trunk.pyramid_taps,
        hf_trunk.widths,
        hf_trunk.strides,
    )
    assert tuple(mean) == (0.485, 0.456, 0.406) and timm_trunk.patch_size == 32
    for H, W in SIZES:
        x = torch.randn(1, 3, H, W)
        with torch.no_grad():
            got = timm_trunk(x, [1, 2, 3, 5, 6])
            want = hf_trunk(x, [1, 2, 3, 5, 6])
            native = timm_trunk.model.forward_intermediates(x, intermediates_only=True)  # the four stages
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
        for g, w in zip([got[0], got[2], got[3], got[4]], native):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    arch = read_hiera_architecture("sam2_hiera_large", backend="timm")
    assert (arch.depth, arch.width, arch.patch_size) == (48, 1152, 32)  # Hiera-L: stages 2/6/36/4


def test_loading_errors_say_what_is_wrong(sam2: Path, tmp_path: Path, tiny_dinov3_factory) -> None:
    with pytest.raises(FileNotFoundError, match="Apache-2.0"):
        load_hiera("sam2_hiera_tiny", str(tmp_path / "absent.pt"), "timm", TIMM_KW)
    with pytest.raises(ValueError, match="not a timm SAM2 Hiera"):
        load_hiera("vit_base_patch16_dinov3", None, "timm")
    with pytest.raises(ValueError, match="holds no SAM2 Hiera"):
        load_hiera("x", str(tiny_dinov3_factory(layers=2, hidden=32)))
    # transformers: a config without weights; weights without the trunk's (another layout).
    from safetensors.torch import load_file, save_file

    for name, keep in (("config-only", None), ("no-block-3", lambda k: ".blocks.3." not in k)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((sam2 / "config.json").read_text())
        if keep is not None:
            state = {k: v for k, v in load_file(sam2 / "model.safetensors").items() if keep(k)}
            save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FileNotFoundError, match="hf download facebook/sam2.1-hiera-tiny"):
        load_hiera("facebook/sam2.1-hiera-tiny", str(tmp_path / "config-only"))
    with pytest.raises(FileNotFoundError, match=r"lacks 14 tensors .*vision_encoder\.backbone\.blocks\.3\."):
        load_hiera("x", str(tmp_path / "no-block-3"))
    # No folder and no hub: the SAM2 instructions (not DINOv3's licence), naming the config key to set.
    from build import check_config
    from config import load_config

    absent = ["model.encoder.pretrained_path=" + str(tiny_dinov3_factory(layers=2, hidden=32))]
    absent += ["model.encoder.layers=[2]", f"model.encoder2.pretrained_path={tmp_path / 'absent'}"]
    with pytest.raises(FileNotFoundError) as err:
        check_config(load_config(str(ROOT / "configs" / "e2net_dual.yaml"), absent))
    message = str(err.value)
    assert message.startswith("model.encoder2: SAM2 weights not found") and "DINOv3" not in message
    assert "hf download facebook/sam2.1-hiera-large" in message and "set model.encoder2.pretrained_path=" in message
    other = make_tiny_sam2(tmp_path / "wider", hidden=32)  # same names, other shapes
    pt = _meta_pt(other, tmp_path / "wider.pt")
    with pytest.raises(ValueError, match="could not load"):
        load_hiera("sam2_hiera_tiny", str(pt), "timm", TIMM_KW)


def test_adapters_after_hiera_blocks_take_each_blocks_width_and_reach_every_tap(sam2: Path) -> None:
    from encoders.adapters import add_adapters

    trunk, *_ = load_hiera("x", str(sam2))
    trunk.requires_grad_(False)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = trunk(x, [2, *trunk.pyramid_taps])
    params = add_adapters(trunk, "all")
    assert [trunk.adapters[str(i)].up.out_features for i in range(6)] == [16, 32, 32, 64, 64, 128]
    assert params and all(p.requires_grad for p in params)
    with torch.no_grad():
        same = trunk(x, [2, *trunk.pyramid_taps])  # the up-projections start at zero
        trunk.adapters["1"].up.weight.normal_()  # block 2 (counted from 1): inside stage 2
        after = trunk(x, [2, *trunk.pyramid_taps])
    assert all(torch.equal(a, b) for a, b in zip(before, same))
    # Stage 1 ends before block 2; block 2's own output and everything after it change.
    assert torch.equal(after[1], before[1]) and not any(torch.equal(a, b) for a, b in zip(after[2:], before[2:]))
    assert not torch.equal(after[0], before[0])


# -------------------------------------------------------------------- fusion
@pytest.mark.parametrize("kind", ["concat", "levels"])
def test_fusion_concatenates_each_level_with_its_projected_resized_source(kind: str) -> None:
    torch.manual_seed(0)
    primary_channels, secondary_channels = [4, 8, 16, 32], [6, 6, 6, 10]
    primary = [torch.randn(2, c, 24 // 2**i, 16 // 2**i) for i, c in enumerate(primary_channels)]
    secondary = [torch.randn(2, c, 7, 5) for c in secondary_channels]  # any size: resized onto each level
    sources = fusion_sources(kind, 4, 4)
    assert sources == ([3, 3, 3, 3] if kind == "concat" else [0, 1, 2, 3])
    fusion = PyramidFusion(primary_channels, secondary_channels, 12, sources)
    with torch.no_grad():
        out = fusion(primary, secondary)
    for i, (p, o) in enumerate(zip(primary, out)):
        s = secondary[sources[i]]
        a, r = fusion.align[i], fusion.reduce[i]
        # Resize first, then project: the same numbers (bilinear weights sum to one).
        d = F.conv2d(F.interpolate(s, size=p.shape[-2:], mode="bilinear"), a.weight, a.bias)
        want = F.conv2d(torch.cat((p, d), 1), r.weight, r.bias)
        assert o.shape == (2, 12, *p.shape[-2:])
        torch.testing.assert_close(o, want, rtol=1e-5, atol=1e-5)
        # The primary's own channels come first in the concatenation.
        assert a.weight.shape == (primary_channels[i], secondary_channels[sources[i]], 1, 1)
    with pytest.raises(ValueError, match="one index into the 4 secondary maps"):
        PyramidFusion(primary_channels, secondary_channels, 12, [0, 1, 2])
