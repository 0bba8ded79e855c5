"""Pretrained trunks seen one way, whatever the library: four tapped feature maps and last-layer tokens.

Every trunk runs through its library's public forward: transformers' ``output_hidden_states`` (then,
unless ``norm=False`` asks for the raw hidden states, the model's final norm, as
``get_intermediate_layers(norm=True)`` does) and timm's ``forward_intermediates`` /
``forward_features``. Fine-tuning the last blocks needs no block-by-block
loop: frozen blocks take no input that requires a gradient, so autograd records nothing for them,
and the first trainable block starts the graph. What a trunk must name for that — its ``blocks``
and final ``norm`` — are the only library attributes read outside a forward, and
``tests/test_library_internals.py`` fails when a pinned library moves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import torch
from einops import rearrange
from torch import nn


class Family(StrEnum):
    """The pretrained families this project loads (read from the checkpoint, never configured)."""

    dinov3_vit = "dinov3_vit"
    dinov3_convnext = "dinov3_convnext"
    dinov2 = "dinov2"
    dinov2_with_registers = "dinov2_with_registers"
    sam2_hiera = "sam2_hiera"


class Trunk(nn.Module):
    """A pretrained backbone: normalised images -> feature maps after the blocks (or stages) in ``taps``.

    ``depth`` counts what ``taps`` index (from 1): transformer blocks of a ViT, stages of a ConvNeXt.
    ``blocks`` are those units in order (``trainable_blocks`` unfreezes the last ones together with
    ``norm``, the final norm applied to every tapped ViT layer). ``lora_targets`` are the module names
    LoRA adapts by default.
    """

    model: nn.Module
    family: Family
    patch_size: int  # input sizes must be multiples of it
    embed_dim: int
    depth: int
    num_registers: int = 0
    lora_targets: tuple[str, ...] = ()
    # A hierarchical trunk's own pyramid: the taps (its stage ends) of its four levels; empty for a ViT.
    pyramid_taps: tuple[int, ...] = ()

    @property
    def blocks(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    @property
    def norm(self) -> nn.Module | None:
        return None

    def tap_shapes(self, taps: Sequence[int]) -> tuple[list[int], list[int]]:
        """(channels, strides) of the maps ``forward`` returns for ``taps``; a ViT's are all D and p."""
        return [self.embed_dim] * len(taps), [self.patch_size] * len(taps)

    def never_trained(self) -> list[nn.Parameter]:
        """Weights no forward uses (masked-image pre-training tokens, classifier heads): kept frozen so
        that DistributedDataParallel sees no trainable parameter without a gradient."""
        return [p for n, p in self.model.named_parameters() if n.split(".")[-1] == "mask_token"]

    def forward(self, x: torch.Tensor, taps: Sequence[int], norm: bool = True) -> list[torch.Tensor]:
        """x: [B, 3, H, W] normalised -> [B, C_i, H / s_i, W / s_i] after each block in ``taps``.

        ``norm``: a ViT's tapped layers go through its final norm; False returns the raw hidden
        states (what the published E2Net fed its decoder). A ConvNeXt's stages have no final norm.
        """
        raise NotImplementedError

    def last_tokens(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normed last layer: {"cls": [B, D], "registers": [B, R, D], "patches": [B, D, H/p, W/p]}."""
        raise NotImplementedError

    def _split(self, tokens: torch.Tensor, H: int, W: int) -> dict[str, torch.Tensor]:
        """[B, 1 + R + h*w, D] (CLS, registers, patches) -> the dict of :meth:`last_tokens`."""
        R = self.num_registers
        return {"cls": tokens[:, 0], "registers": tokens[:, 1 : 1 + R], "patches": self._to_map(tokens, H, W)}

    def _to_map(self, tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """[B, 1 + R + h*w, D] -> [B, D, h, w]: CLS and registers dropped, patches in raster order."""
        patches = tokens[:, 1 + self.num_registers :]
        return rearrange(patches, "b (h w) d -> b d h w", h=H // self.patch_size, w=W // self.patch_size).contiguous()


# --------------------------------------------------------------------------- transformers
# model_type in config.json -> (family, attribute of the final norm, attribute path of the block list).
HF_FAMILIES = {
    "dinov3_vit": (Family.dinov3_vit, "norm", "model.layer"),
    "dinov2": (Family.dinov2, "layernorm", "encoder.layer"),
    "dinov2_with_registers": (Family.dinov2_with_registers, "layernorm", "encoder.layer"),
}
# LoRA's default targets: the attention projections (query, key, value, output), named alike in
# transformers' DINOv3 and DINOv2 layers.
HF_LORA_TARGETS = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj")


class HFViT(Trunk):
    """A transformers ViT (``DINOv3ViTModel``, ``Dinov2Model``, ``Dinov2WithRegistersModel``)."""

    lora_targets = HF_LORA_TARGETS

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        c = model.config
        self.family, self._norm_name, self._blocks_path = HF_FAMILIES[c.model_type]
        self.embed_dim, self.depth = c.hidden_size, c.num_hidden_layers
        self.patch_size = square(c.patch_size, "patch_size")
        self.num_registers = int(getattr(c, "num_register_tokens", 0) or 0)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.get_submodule(self._blocks_path)

    @property
    def norm(self) -> nn.Module:
        return getattr(self.model, self._norm_name)

    def forward(self, x, taps, norm=True):
        # hidden_states: the embeddings' output, then one entry per block, before the final norm.
        hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states
        if not norm:
            return [self._to_map(hidden[t], *x.shape[-2:]) for t in taps]
        final, dtype = self.norm, self.norm.weight.dtype
        return [self._to_map(final(hidden[t].to(dtype)), *x.shape[-2:]) for t in taps]

    def last_tokens(self, x):
        return self._split(self.model(pixel_values=x).last_hidden_state, *x.shape[-2:])


# --------------------------------------------------------------------------- timm
def _distinct_indices(taps: Sequence[int]) -> list[int]:
    return sorted({t - 1 for t in taps})


class TimmViT(Trunk):
    """A timm ViT: DINOv3 (``Eva`` with RoPE) or DINOv2 (``VisionTransformer``, with or without registers)."""

    lora_targets = ("attn.qkv", "attn.proj")

    def __init__(self, model: nn.Module, family: Family):
        super().__init__()
        self.model, self.family = model, family
        self.embed_dim, self.depth = model.embed_dim, len(model.blocks)
        self.patch_size = square(model.patch_embed.patch_size, "patch_size")
        self.num_registers = model.num_prefix_tokens - 1

    @property
    def blocks(self) -> nn.Sequential:
        return self.model.blocks

    @property
    def norm(self) -> nn.Module:
        return self.model.norm

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.model.patch_embed.proj.weight.dtype)  # frozen weights may be stored in bf16

    def forward(self, x, taps, norm=True):
        indices = _distinct_indices(taps)
        maps = self.model.forward_intermediates(
            self._input(x), indices=indices, norm=norm, stop_early=True, output_fmt="NCHW", intermediates_only=True
        )
        return [maps[indices.index(t - 1)] for t in taps]

    def last_tokens(self, x):
        return self._split(self.model.forward_features(self._input(x)), *x.shape[-2:])


class TimmConvNeXt(Trunk):
    """A timm DINOv3 ConvNeXt: its four stages are the pyramid; LoRA adapts the pointwise MLPs (no attention)."""

    family = Family.dinov3_convnext
    lora_targets = ("mlp.fc1", "mlp.fc2")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.depth = len(model.stages)
        self.pyramid_taps = tuple(range(1, self.depth + 1))
        self.patch_size = CONVNEXT_STRIDE
        self._channels = [f["num_chs"] for f in model.feature_info]
        self._strides = [f["reduction"] for f in model.feature_info]
        self.embed_dim = self._channels[-1]

    @property
    def blocks(self) -> nn.Sequential:
        return self.model.stages

    def tap_shapes(self, taps):
        return [self._channels[t - 1] for t in taps], [self._strides[t - 1] for t in taps]

    def never_trained(self):
        return list(self.model.head.parameters())  # its norm serves last_tokens() only

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(next(self.model.stem.parameters()).dtype)

    def forward(self, x, taps, norm=True):  # stages have no final norm: ``norm`` changes nothing
        indices = _distinct_indices(taps)
        maps = self.model.forward_intermediates(
            self._input(x), indices=indices, stop_early=True, intermediates_only=True
        )
        return [maps[indices.index(t - 1)] for t in taps]

    def last_tokens(self, x):
        last = self.model.forward_features(self._input(x))
        cls = self.model.forward_head(last, pre_logits=True)
        return {"cls": cls, "registers": cls.new_zeros(cls.shape[0], 0, cls.shape[1]), "patches": last}


CONVNEXT_STRIDE = 32  # input granularity of a four-stage ConvNeXt


def square(size, what: str) -> int:
    """A square size from an int or an (h, w) pair; a non-square one is an error."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square {what} {size} is not supported")
        size = size[0]
    return int(size)
