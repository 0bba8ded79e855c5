"""DINOv3 encoder: an image in [0, 1] -> four feature maps at strides (4, 8, 16, 32).

A ViT trunk is tapped at four transformer blocks (counted from 1; default: quarters of the depth,
(3, 6, 9, 12) for ViT-S/B, (6, 12, 18, 24) for ViT-L, (8, 16, 24, 32) for H+, (10, 20, 30, 40) for 7B).
Each tapped layer goes through the trunk's final LayerNorm (as DINOv3's
``get_intermediate_layers(norm=True)`` and transformers' ``DINOv3ViTBackbone`` do), loses its CLS and
register tokens and is reshaped to a [B, D, H/p, W/p] map. ViTDet's simple feature pyramid then
turns the four stride-16 maps into strides 4, 8, 16, 32 (learnable transposed convolutions up,
max-pooling down), or ``pyramid="interpolate"`` resizes them bilinearly (no weights, the trunk's width
on every level); ``simple=True`` keeps all four at stride 16. A timm DINOv3 ConvNeXt gives its
four native stages instead.

The trunk always runs in eval mode: DINOv3's RoPE randomly rescales patch coordinates in training
mode (``pos_embed_rescale``), a pre-training augmentation that only adds noise here, and released
configs have no dropout. Frozen blocks run under ``torch.no_grad()``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from config import Pyramid

# Re-exported: helpers that read a checkpoint's config before anything is built.
from dinov3_trunks import ViTTrunk, default_layers, load_trunk, read_patch_size, weights_missing_error  # noqa: F401

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- pyramid
class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid, one tapped layer per level.

    Four [B, D, h, w] maps at stride p -> [B, D/4, 4h, 4w], [B, D/2, 2h, 2w], [B, D, h, w],
    [B, D, ceil(h/2), ceil(w/2)].
    """

    def __init__(self, dim: int):
        super().__init__()
        from timm.layers import LayerNorm2d

        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
            LayerNorm2d(dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, ceil_mode=True)  # ceil: an odd patch grid keeps its last row/column
        self.out_channels = [dim // 4, dim // 2, dim, dim]

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])]


class InterpolatePyramid(nn.Module):
    """Four [B, D, h, w] maps at stride p, bilinearly resized to the sizes of :class:`SimpleFeaturePyramid`
    ([4h, 4w], [2h, 2w], [h, w], [ceil(h/2), ceil(w/2)]), keeping D channels on every level; no weights.

    The reference E2Net's multi-scale path: at 384 px with ViT-B/16 it gives ``[1, 768, 96, 96]``
    down to ``[1, 768, 12, 12]``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.out_channels = [dim] * 4

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        h, w = maps[0].shape[-2:]
        sizes = [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), (-(-h // 2), -(-w // 2))]
        return [
            m if tuple(m.shape[-2:]) == s else F.interpolate(m, size=s, mode="bilinear", align_corners=False)
            for m, s in zip(maps, sizes)
        ]


PYRAMIDS = {Pyramid.vitdet: SimpleFeaturePyramid, Pyramid.interpolate: InterpolatePyramid}


# --------------------------------------------------------------------------- encoder
class DINOv3Encoder(nn.Module):
    """[B, 3, H, W] RGB in [0, 1] -> list of four [B, C_i, H/s_i, W/s_i] maps (``out_channels``, ``strides``).

    H and W must be multiples of ``patch_size``. ``weights_dtype`` is the storage dtype of the frozen
    trunk weights (``torch.bfloat16`` pays off only under bf16 autocast); trainable blocks, the final
    norm and the pyramid always stay float32. Outputs are float32 unless autocast is on.
    """

    def __init__(
        self,
        trunk: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        layers: Sequence[int] | None = None,
        simple: bool = False,
        freeze: bool = True,
        trainable_blocks: int = 0,
        weights_dtype: torch.dtype = torch.float32,
        pyramid: str = "vitdet",
    ):
        super().__init__()
        self.trunk = trunk
        self.is_vit = isinstance(trunk, ViTTrunk)
        depth = trunk.depth
        if not 0 <= trainable_blocks <= depth:
            raise ValueError(f"trainable_blocks={trainable_blocks} must be between 0 and the trunk's {depth} blocks")
        if trainable_blocks and not freeze:
            raise ValueError(
                "trainable_blocks applies to a frozen encoder (freeze=True); freeze=False already trains every block"
            )
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.patch_size, self.embed_dim, self.num_registers = trunk.patch_size, trunk.embed_dim, trunk.num_registers
        self.frozen_blocks = depth - trainable_blocks if freeze else 0
        if pyramid not in PYRAMIDS:
            raise ValueError(f"pyramid '{pyramid}' is not one of {', '.join(PYRAMIDS)}")
        self.pyramid: nn.Module | None = None
        if self.is_vit:
            self.layers = tuple(int(i) for i in layers) if layers else default_layers(depth)
            if len(self.layers) != 4 or not all(1 <= i <= depth for i in self.layers):
                raise ValueError(
                    f"layers {list(self.layers)}: give four block indices in 1..{depth} (blocks count "
                    f"from 1; e.g. {list(default_layers(depth))} for this {depth}-block model)"
                )
            if self.frozen_blocks < depth and max(self.layers) < depth:
                # Trained but unused blocks would get no gradient, which DistributedDataParallel rejects.
                raise ValueError(
                    f"blocks {max(self.layers) + 1}..{depth} would train but come after the last tapped "
                    f"layer {max(self.layers)}: tap block {depth} last, or keep the encoder frozen"
                )
            p = self.patch_size
            if simple:
                self.out_channels, self.strides = [self.embed_dim] * 4, [p] * 4
            else:
                self.pyramid = PYRAMIDS[pyramid](self.embed_dim)
                self.out_channels, self.strides = self.pyramid.out_channels, [p // 4, p // 2, p, 2 * p]
        else:
            if layers or simple:
                raise ValueError(
                    "layers and simple=True apply to ViT trunks; a ConvNeXt gives its four stages "
                    "as they are (leave layers empty, simple=false)"
                )
            self.layers, self.out_channels, self.strides = (1, 2, 3, 4), trunk.out_channels, trunk.strides
        trunk.requires_grad_(not freeze)
        if freeze and trainable_blocks:
            trunk.blocks[depth - trainable_blocks :].requires_grad_(True)
            if self.is_vit:
                trunk.norm.requires_grad_(True)  # it normalises every tapped layer
        for p in trunk.never_trained():
            p.requires_grad_(False)
        trunk.eval()
        for p in trunk.parameters():
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(weights_dtype)

    # -- mode -------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> DINOv3Encoder:
        super().train(mode)
        self.trunk.eval()  # see the module docstring: train-mode RoPE jitter would only add noise
        return self

    # -- forward ----------------------------------------------------------------------------------
    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {list(x.shape)}")
        p = self.patch_size
        H, W = x.shape[-2:]
        if H % p or W % p:
            fix = lambda s: max(p, round(s / p) * p)  # noqa: E731
            raise ValueError(
                f"input size {H}x{W} is not a multiple of the encoder's patch size {p}: "
                f"resize or pad it, e.g. to {fix(H)}x{fix(W)}"
            )
        return (x.float() - self.pixel_mean) / self.pixel_std

    def _to_map(self, tokens: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """[B, 1 + R + h*w, D] -> [B, D, h, w], CLS and registers dropped."""
        B, _, D = tokens.shape
        patches = tokens[:, 1 + self.num_registers :]
        return patches.reshape(B, H // self.patch_size, W // self.patch_size, D).permute(0, 3, 1, 2).contiguous()

    def _out_dtype(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # bf16 trunk weights give bf16 tokens; without autocast the float32 pyramid needs float32.
        return t if torch.is_autocast_enabled(x.device.type) else t.float()

    def tapped_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] in [0, 1] -> the four tapped layers as [B, D, H/p, W/p] (ConvNeXt: its stages)."""
        xn = self._normalise(x)
        if not self.is_vit:
            return [self._out_dtype(x, m) for m in self.trunk(xn, self.frozen_blocks)]
        tokens = self.trunk(xn, self.layers, self.frozen_blocks)
        return [self._out_dtype(x, self._to_map(t, *x.shape[-2:])) for t in tokens]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] RGB in [0, 1] -> [B, out_channels[i], H / strides[i], W / strides[i]] for i in 0..3."""
        maps = self.tapped_maps(x)
        return self.pyramid(maps) if self.pyramid is not None else maps

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Last-layer features, normed: {"cls": [B, D], "registers": [B, R, D], "patches": [B, D, h, w]}.

        A ConvNeXt has no tokens: "cls" is its pooled, normed last stage and "registers" is empty.
        """
        xn = self._normalise(x)
        if not self.is_vit:
            last = self.trunk(xn, self.frozen_blocks)[-1]
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_blocks == 0):
                cls = self.trunk.model.forward_head(last.to(self.trunk.model.head.norm.weight.dtype), pre_logits=True)
            out = {"cls": cls, "registers": cls.new_zeros(cls.shape[0], 0, cls.shape[1]), "patches": last}
        else:
            t = self.trunk(xn, (self.trunk.depth,), self.frozen_blocks)[0]
            out = {
                "cls": t[:, 0],
                "registers": t[:, 1 : 1 + self.num_registers],
                "patches": self._to_map(t, *x.shape[-2:]),
            }
        return {k: self._out_dtype(x, v) for k, v in out.items()}


def build_dinov3_encoder(
    model_name: str = "facebook/dinov3-vitb16-pretrain-lvd1689m",
    pretrained_path: str | None = None,
    freeze: bool = True,
    simple: bool = False,
    layers: Sequence[int] | None = None,
    backend: str = "hf",
    trainable_blocks: int = 0,
    weights_dtype: torch.dtype = torch.float32,
    timm_kwargs: dict | None = None,
    pyramid: str = "vitdet",
) -> DINOv3Encoder:
    """Load a DINOv3 trunk and wrap it; see :class:`DINOv3Encoder` for the forward contract.

    backend "hf": ``pretrained_path`` is a local folder (config.json, model.safetensors,
    preprocessor_config.json), tried before the hub id ``model_name``. backend "timm": ``model_name``
    is a timm name (``vit_base_patch16_dinov3``, ``convnext_tiny.dinov3_lvd1689m``, ...),
    ``pretrained_path`` a Meta-format (or timm) ``.pth``; without one timm's own hub weights are
    tried. ``layers=None`` taps :func:`default_layers` of the depth. ``timm_kwargs`` go to
    ``timm.create_model`` (tests use them for tiny architectures).
    """
    trunk, mean, std = load_trunk(model_name, pretrained_path, backend, timm_kwargs)
    enc = DINOv3Encoder(
        trunk,
        mean,
        std,
        layers=layers,
        simple=simple,
        freeze=freeze,
        trainable_blocks=trainable_blocks,
        weights_dtype=weights_dtype,
        pyramid=pyramid,
    )
    log.info(
        "DINOv3 encoder %s (%s): %d blocks, width %d, patch %d, %d registers, layers %s, strides %s",
        model_name,
        backend,
        trunk.depth,
        enc.embed_dim,
        enc.patch_size,
        enc.num_registers,
        list(enc.layers),
        enc.strides,
    )
    return enc
