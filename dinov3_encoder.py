"""The encoder: an image in [0, 1] -> four feature maps at strides (4, 8, 16, 32).

Any supported trunk (DINOv3 or DINOv2, from transformers or timm; see :mod:`encoders`). A ViT
is tapped at four transformer blocks (counted from 1; default: quarters of the depth, (3, 6, 9, 12)
for ViT-S/B, (6, 12, 18, 24) for ViT-L, (8, 16, 24, 32) for H+, (10, 20, 30, 40) for 7B). Each tapped
layer goes through the trunk's final LayerNorm (as DINOv3's ``get_intermediate_layers(norm=True)``
and transformers' ``DINOv3ViTBackbone`` do; ``tap_norm=False``: raw, as the published E2Net), loses
its CLS and register tokens and is reshaped to a [B, D, H/p, W/p] map. ViTDet's simple feature
pyramid then turns the four stride-p maps into strides p/4, p/2, p, 2p (learnable transposed
convolutions up, max-pooling down), ``pyramid="interpolate"``
resizes them bilinearly (no weights, the trunk's width on every level) and ``pyramid="projected"``
projects each level (Linear, LayerNorm, GELU) before resizing it, as E2Net-DINOv2 does;
``simple=True`` keeps all four at stride p. A hierarchical trunk (a timm DINOv3 ConvNeXt, a SAM2
Hiera: :mod:`encoders.hiera`) gives its four native stages instead.

With ``input_size`` the encoder sees every image resized to that square (bilinear, antialiased, on
the image's device), whatever size it arrives at: two encoders of one network each get their own.

The trunk always runs in eval mode: DINOv3's RoPE randomly rescales patch coordinates in training
mode (``pos_embed_rescale``), a pre-training augmentation that only adds noise here, and released
configs have no dropout (LoRA's dropout, if any, follows the parent's mode). A frozen trunk runs
under ``torch.no_grad()``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from config import Pyramid
from encoders.adapters import Adapters, adapter_parameters, add_adapters
from encoders.hiera import is_hiera, load_hiera
from encoders.loading import default_layers, load_trunk, nearest_sizes
from encoders.lora import LoRA, add_lora, lora_dropouts, lora_parameters
from encoders.trunks import Trunk

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


def pyramid_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Sizes of the four levels built from an h x w patch grid: strides p/4, p/2, p and 2p
    ([4h, 4w], [2h, 2w], [h, w], [ceil(h/2), ceil(w/2)]; ceil keeps an odd grid's last row/column)."""
    return [(4 * h, 4 * w), (2 * h, 2 * w), (h, w), (-(-h // 2), -(-w // 2))]


def _resize(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return m if tuple(m.shape[-2:]) == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)


class InterpolatePyramid(nn.Module):
    """Four [B, D, h, w] maps at stride p, bilinearly resized to the sizes of :func:`pyramid_sizes`
    (those of :class:`SimpleFeaturePyramid`), keeping D channels on every level; no weights.

    The reference E2Net's multi-scale path: at 384 px with ViT-B/16 it gives ``[1, 768, 96, 96]``
    down to ``[1, 768, 12, 12]``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.out_channels = [dim] * 4

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [_resize(m, s) for m, s in zip(maps, pyramid_sizes(*maps[0].shape[-2:]))]


class ProjectedPyramid(nn.Module):
    """E2Net-DINOv2's pyramid: four [B, D, h, w] maps at stride p -> [B, D/4, 4h, 4w], [B, D/2, 2h, 2w],
    [B, D, h, w], [B, D, ceil(h/2), ceil(w/2)].

    Level i goes through its own ``Linear -> LayerNorm -> GELU`` over the channels (widths D/4, D/2,
    D, D), then to the sizes of :func:`pyramid_sizes`: bilinear x4 and x2 up (projecting first keeps
    their cost at the patch grid's size), and a 2x2 average down (ceil: an odd grid keeps its last
    row/column). On an even grid that average is what a bilinear resize by 1/2 computes; unlike a
    resize to ceil(h/2), it exports to ONNX correctly for odd grids too.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.out_channels = [dim // 4, dim // 2, dim, dim]
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, c), nn.LayerNorm(c), nn.GELU()) for c in self.out_channels
        )

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        # The projection acts on the channels.
        up4, up2, same, down2 = (proj(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for m, proj in zip(maps, self.proj))
        sizes = pyramid_sizes(*maps[0].shape[-2:])
        down2 = F.avg_pool2d(down2, 2, ceil_mode=True, count_include_pad=False)
        return [_resize(up4, sizes[0]), _resize(up2, sizes[1]), same.contiguous(), down2]


PYRAMIDS = {
    Pyramid.vitdet: SimpleFeaturePyramid,
    Pyramid.interpolate: InterpolatePyramid,
    Pyramid.projected: ProjectedPyramid,
}


# --------------------------------------------------------------------------- encoder
def _inputs_in_own_dtype(module: nn.Module, args: tuple, kwargs: dict):
    """A trainable float32 block behind bf16-stored frozen blocks: without autocast, feed it float32."""
    weight = next(module.parameters())
    if torch.is_autocast_enabled(weight.device.type):
        return None
    dtype = weight.dtype

    def cast(t):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


class PyramidEncoder(nn.Module):
    """[B, 3, H, W] RGB in [0, 1] -> list of four [B, C_i, H/s_i, W/s_i] maps (``out_channels``, ``strides``;
    a stride is fractional when the patch is not a multiple of 4, e.g. 3.5 for DINOv2's 14).

    Wraps any :class:`~encoders.trunks.Trunk` (DINOv3 or DINOv2, transformers or timm, ViT or ConvNeXt)
    with its normalisation, the choice of tapped blocks, freezing and the pyramid.
    H and W must be multiples of ``patch_size``, unless ``drop_border`` crops every input to the
    largest multiple inside it (its right and bottom border dropped, as the published E2Net's patch
    layer did at 392 px). ``channel_order="bgr"`` reverses the channels before the normalisation
    (``mean``/``std`` then apply to B, G, R), as the published E2Net fed OpenCV's images.
    ``tap_norm=False`` returns the tapped layers without the trunk's final norm.
    ``weights_dtype`` is the storage dtype of the frozen
    trunk weights (``torch.bfloat16`` pays off only under bf16 autocast); trainable blocks, LoRA, the
    final norm and the pyramid always stay float32. Outputs are float32 unless autocast is on.
    ``lora``: low-rank adapters on the frozen trunk (:mod:`encoders.lora`); ``adapters``: bottleneck
    adapters after chosen blocks (:mod:`encoders.adapters`), float32 like LoRA. Both need
    ``freeze=True`` and no ``trainable_blocks``; they combine.
    """

    def __init__(
        self,
        trunk: Trunk,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        layers: Sequence[int] | None = None,
        simple: bool = False,
        freeze: bool = True,
        trainable_blocks: int = 0,
        weights_dtype: torch.dtype = torch.float32,
        lora: LoRA | None = None,
        adapters: Adapters | None = None,
        pyramid: str = "vitdet",
        tap_norm: bool = True,
        channel_order: str = "rgb",
        drop_border: bool = False,
        input_size: int | None = None,
    ):
        super().__init__()
        self.trunk = trunk
        if input_size is not None and input_size % trunk.patch_size:
            sizes = " or ".join(map(str, nearest_sizes(input_size, trunk.patch_size)))
            raise ValueError(
                f"input_size {input_size} is not a multiple of the patch size {trunk.patch_size} (try {sizes})"
            )
        self.input_size = input_size
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order '{channel_order}' is not rgb or bgr")
        self.tap_norm, self.bgr, self.drop_border = tap_norm, channel_order == "bgr", drop_border
        depth = trunk.depth
        if not 0 <= trainable_blocks <= depth:
            raise ValueError(f"trainable_blocks={trainable_blocks} must be between 0 and the trunk's {depth} blocks")
        if trainable_blocks and not freeze:
            raise ValueError(
                "trainable_blocks applies to a frozen encoder (freeze=True); freeze=False already trains every block"
            )
        lora = lora if lora is not None and lora.rank > 0 else None
        if lora is not None and (not freeze or trainable_blocks):
            raise ValueError(
                "LoRA adapts a frozen trunk: use it with freeze=True and trainable_blocks=0 "
                "(or set model.encoder.lora.rank=0)"
            )
        adapters = adapters if adapters is not None and adapters.blocks else None
        if adapters is not None and (not freeze or trainable_blocks):
            raise ValueError(
                "adapters go on a frozen trunk: use them with freeze=True and trainable_blocks=0 "
                "(or set model.encoder.adapter.blocks=[])"
            )
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.patch_size, self.embed_dim, self.num_registers = trunk.patch_size, trunk.embed_dim, trunk.num_registers
        self.frozen_blocks = depth - trainable_blocks if freeze else 0
        default = trunk.pyramid_taps or default_layers(depth)
        self.layers = tuple(int(i) for i in layers) if layers else default
        if (len(self.layers) != 4 and not simple) or not all(1 <= i <= depth for i in self.layers):
            raise ValueError(
                f"layers {list(self.layers)}: give {'block indices' if simple else 'four block indices'} in "
                f"1..{depth} (blocks count from 1; e.g. {list(default)} for this {depth}-block model)"
            )
        if self.frozen_blocks < depth and max(self.layers) < depth:
            # Trained but unused blocks would get no gradient, which DistributedDataParallel rejects.
            raise ValueError(
                f"blocks {max(self.layers) + 1}..{depth} would train but come after the last tapped "
                f"layer {max(self.layers)}: tap block {depth} last, or keep the encoder frozen"
            )
        if pyramid not in PYRAMIDS:
            raise ValueError(f"pyramid '{pyramid}' is not one of {', '.join(PYRAMIDS)}")
        channels, strides = trunk.tap_shapes(self.layers)
        self.pyramid: nn.Module | None = None
        if trunk.pyramid_taps:  # a ConvNeXt or a Hiera: its stages already form the pyramid
            if simple or self.layers != trunk.pyramid_taps:
                raise ValueError(
                    f"layers and simple=True apply to ViT trunks; a {trunk.family} trunk gives its four stages "
                    "as they are (leave layers empty, simple=false)"
                )
            self.out_channels, self.strides = channels, strides
        elif simple:
            self.out_channels, self.strides = channels, strides
        else:
            p = strides[0]
            self.pyramid = PYRAMIDS[pyramid](channels[0])
            # Patch 14: strides 3.5, 7, 14, 28 (the 4x level of a 28x28 grid is 112x112 at 392 px).
            strides = [p / 4, p / 2, p, 2 * p]
            self.out_channels, self.strides = self.pyramid.out_channels, [int(s) if s % 1 == 0 else s for s in strides]

        trunk.requires_grad_(not freeze)
        if freeze and trainable_blocks:
            # the final norm trains with the last blocks when the taps go through it (unused, it would get no gradient)
            for m in [*list(trunk.blocks)[depth - trainable_blocks :], trunk.norm if tap_norm else None]:
                if m is not None:
                    m.requires_grad_(True)
                    m.register_forward_pre_hook(_inputs_in_own_dtype, with_kwargs=True)
        for p in trunk.never_trained():
            p.requires_grad_(False)
        if lora is not None:  # before the cast below: peft gives adapters the dtype of the layer they wrap
            add_lora(trunk, lora, max(self.layers))
        if adapters is not None:  # float32 whatever the cast below does (they train)
            add_adapters(trunk, adapters.blocks, adapters.reduction, adapters.init_scale, usable=max(self.layers))
        self._lora_dropouts = lora_dropouts(trunk)
        for p in trunk.parameters():
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(weights_dtype)
        self._trunk_trains = any(p.requires_grad for p in trunk.parameters())
        trunk.eval()

    def lora_parameters(self) -> list[nn.Parameter]:
        """The LoRA adapters' weights (empty without LoRA)."""
        return lora_parameters(self.trunk)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The block adapters' weights (empty without adapters)."""
        return adapter_parameters(self.trunk)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The trunk's parameters, frozen or not (fine-tuned blocks, LoRA and adapters among them)."""
        return list(self.trunk.parameters())

    # -- mode -------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> PyramidEncoder:
        super().train(mode)
        self.trunk.eval()  # see the module docstring: train-mode RoPE jitter would only add noise
        for m in self._lora_dropouts:
            m.train(mode)
        return self

    # -- forward ----------------------------------------------------------------------------------
    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {list(x.shape)}")
        s = self.input_size
        if s is not None:  # always, even at that size already (an exact copy): see models.fusion
            x = F.interpolate(x.float(), size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        H, W = x.shape[-2:]
        p = self.patch_size
        if self.drop_border:
            x = x[..., : H // p * p, : W // p * p]
        elif H % p or W % p:
            fix = lambda s: nearest_sizes(s, self.patch_size)[0]  # noqa: E731
            raise ValueError(
                f"input size {H}x{W} is not a multiple of the encoder's patch size {self.patch_size}: "
                f"resize or pad it, e.g. to {fix(H)}x{fix(W)}"
            )
        if self.bgr:
            x = x.flip(1)
        return (x.float() - self.pixel_mean) / self.pixel_std

    def _out_dtype(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # bf16 trunk weights give bf16 tokens; without autocast the float32 pyramid needs float32.
        return t if torch.is_autocast_enabled(x.device.type) else t.float()

    def _grad(self) -> torch.autograd.grad_mode.set_grad_enabled:
        # A fully frozen trunk runs under no_grad. Otherwise autograd records from the first
        # parameter that trains on: frozen blocks before it cost no activation memory.
        return torch.set_grad_enabled(torch.is_grad_enabled() and self._trunk_trains)

    def tapped_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] in [0, 1] -> the four tapped layers as [B, D, H/p, W/p] (ConvNeXt: its stages)."""
        xn = self._normalise(x)
        with self._grad():
            maps = self.trunk(xn, self.layers, norm=self.tap_norm)
        return [self._out_dtype(x, m) for m in maps]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] RGB in [0, 1] -> [B, out_channels[i], H / strides[i], W / strides[i]] for i in 0..3."""
        maps = self.tapped_maps(x)
        return self.pyramid(maps) if self.pyramid is not None else maps

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Last-layer features, normed: {"cls": [B, D], "registers": [B, R, D], "patches": [B, D, h, w]}.

        A ConvNeXt has no tokens: "cls" is its pooled, normed last stage and "registers" is empty.
        """
        xn = self._normalise(x)
        with self._grad():
            out = self.trunk.last_tokens(xn)
        return {k: self._out_dtype(x, v) for k, v in out.items()}


def build_dinov3_encoder(
    *,
    model_name: str = "facebook/dinov3-vitb16-pretrain-lvd1689m",
    pretrained_path: str | None = None,
    freeze: bool = True,
    simple: bool = False,
    layers: Sequence[int] | None = None,
    backend: str = "hf",
    trainable_blocks: int = 0,
    weights_dtype: torch.dtype = torch.float32,
    timm_kwargs: dict | None = None,
    lora: LoRA | None = None,
    adapters: Adapters | None = None,
    pyramid: str = "vitdet",
    tap_norm: bool = True,
    channel_order: str = "rgb",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    drop_border: bool = False,
    input_size: int | None = None,
) -> PyramidEncoder:
    """Load a trunk of any supported family and wrap it; see :class:`PyramidEncoder` for the forward contract.

    backend "hf": ``pretrained_path`` is a local folder (config.json, model.safetensors,
    preprocessor_config.json) of a DINOv3 or DINOv2 (with or without registers) model, tried before
    the hub id ``model_name``. backend "timm": ``model_name`` is a timm name
    (``vit_base_patch16_dinov3``, ``convnext_tiny.dinov3_lvd1689m``, ``vit_base_patch14_dinov2.lvd142m``,
    ``vit_base_patch14_reg4_dinov2.lvd142m``, ...), ``pretrained_path`` a Meta-format (or timm)
    ``.pth``; without one timm's own hub weights are tried. A SAM2 Hiera loads the same way
    (:func:`encoders.hiera.load_hiera`: a ``facebook/sam2.1-hiera-*`` folder, or timm's ``sam2_hiera_*``
    with Meta's ``.pt``). ``layers=None`` taps a hierarchical trunk's four stages, a ViT's
    :func:`default_layers` of the depth. ``timm_kwargs`` go to ``timm.create_model`` (tests use them
    for tiny architectures). ``mean`` and ``std`` (on the [0, 1] scale, in the order the trunk
    receives the channels) replace the checkpoint's own normalisation. ``input_size``: see
    :class:`PyramidEncoder`.
    """
    load = load_hiera if is_hiera(model_name, pretrained_path, backend) else load_trunk
    trunk, own_mean, own_std = load(model_name, pretrained_path, backend, timm_kwargs)
    enc = PyramidEncoder(
        trunk,
        mean=own_mean if mean is None else mean,
        std=own_std if std is None else std,
        layers=layers,
        simple=simple,
        freeze=freeze,
        trainable_blocks=trainable_blocks,
        weights_dtype=weights_dtype,
        lora=lora,
        adapters=adapters,
        pyramid=pyramid,
        tap_norm=tap_norm,
        channel_order=channel_order,
        drop_border=drop_border,
        input_size=input_size,
    )
    n_adapters = len(getattr(trunk, "adapters", ()))
    log.info(
        "encoder %s (%s, %s): %d blocks, width %d, patch %d, %d registers, layers %s, strides %s%s%s",
        model_name,
        backend,
        trunk.family,
        trunk.depth,
        enc.embed_dim,
        enc.patch_size,
        enc.num_registers,
        list(enc.layers),
        enc.strides,
        f", LoRA rank {lora.rank} ({sum(p.numel() for p in enc.lora_parameters())} parameters)"
        if lora and lora.rank
        else "",
        f", {n_adapters} adapters ({sum(p.numel() for p in enc.adapter_parameters())} parameters)"
        if n_adapters
        else "",
    )
    return enc
