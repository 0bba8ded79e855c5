"""The encoder: an image in [0, 1] -> four feature maps at strides (4, 8, 16, 32).

Any supported trunk (DINOv3 or DINOv2, from transformers or timm; see :mod:`encoders`). A ViT
is tapped at four transformer blocks (counted from 1; default: quarters of the depth, (3, 6, 9, 12)
for ViT-S/B, (6, 12, 18, 24) for ViT-L, (8, 16, 24, 32) for H+, (10, 20, 30, 40) for 7B). Each tapped
layer goes through the trunk's final LayerNorm (as DINOv3's ``get_intermediate_layers(norm=True)``
and transformers' ``DINOv3ViTBackbone`` do; ``tap_norm=False``: raw, as the published E2Net), loses
its CLS and register tokens and is reshaped to a [B, D, H/p, W/p] map. A pyramid (:mod:`encoders.pyramids`)
then turns the four stride-p maps into strides p/4, p/2, p, 2p; ``simple=True`` keeps them at stride p.
A hierarchical trunk (a timm DINOv3 ConvNeXt, a SAM2 Hiera: :mod:`encoders.hiera`) gives its four
native stages instead. With ``input_size`` the encoder sees every image resized to that square
(bilinear, antialiased unless ``antialias=False``, on the image's device), whatever size it arrives
at: two encoders of one network each get their own.

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

from encoders.adapters import Adapters, adapter_parameters
from encoders.hiera import is_hiera, load_hiera
from encoders.loading import default_layers, load_trunk
from encoders.lora import LoRA, lora_dropouts, lora_parameters
from encoders.pyramids import PYRAMIDS
from encoders.recompute import recompute_blocks
from encoders.rules import check_depth, check_taps, check_tiles, check_training
from encoders.trunks import Trunk
from encoders.tuning import prepare_trunk

log = logging.getLogger(__name__)


class PyramidEncoder(nn.Module):
    """[B, 3, H, W] RGB in [0, 1] -> list of four [B, C_i, H/s_i, W/s_i] maps (``out_channels``, ``strides``;
    a stride is fractional when the patch is not a multiple of 4, e.g. 3.5 for DINOv2's 14).

    Wraps any :class:`~encoders.trunks.Trunk` with its normalisation, tapped blocks, freezing and pyramid.
    ``layers``: the tapped blocks, counted from 1 (empty: the default four), unlike ``adapters.blocks``,
    which count from 0. H and W must be multiples of ``patch_size``, unless ``drop_border`` crops every
    input to the largest multiple inside it (its right and bottom border dropped, as the published
    E2Net's patch layer did at 392 px). ``channel_order="bgr"`` reverses the channels before the
    normalisation (``mean``/``std`` then apply to B, G, R), as the published E2Net fed OpenCV's images.
    ``tap_norm=False`` returns the tapped layers without the trunk's final norm. ``weights_dtype`` is
    the storage dtype of the frozen trunk weights (:mod:`encoders.tuning`); trainable blocks, LoRA,
    the final norm and the pyramid always stay float32. Outputs are float32 unless autocast is on.
    ``lora``: low-rank adapters on the frozen trunk (:mod:`encoders.lora`); ``adapters``: bottleneck
    adapters after chosen blocks (:mod:`encoders.adapters`), float32 like LoRA. Both need
    ``freeze=True`` and no ``trainable_blocks``; they combine. Settings that break a rule of
    :mod:`encoders.rules` raise ValueError. ``activation_checkpointing``: a trunk that trains recomputes
    its blocks' activations, adapters and LoRA included, in the backward pass (:mod:`encoders.recompute`);
    ``recomputes`` says whether it does (a frozen trunk never needs to).
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
        pyramid_sizes: str = "patch",
        tap_norm: bool = True,
        channel_order: str = "rgb",
        drop_border: bool = False,
        input_size: int | None = None,
        antialias: bool = True,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.trunk = trunk
        lora = lora if lora is not None and lora.rank > 0 else None
        adapters = adapters if adapters is not None and adapters.blocks else None
        default = trunk.pyramid_taps or default_layers(trunk.depth)
        self.layers = tuple(int(i) for i in layers) if layers else default
        check_training(freeze, trainable_blocks, lora.rank if lora else 0, adapters.blocks if adapters else ())
        check_taps(self.layers, simple)
        check_depth(trunk.depth, self.layers, freeze, trainable_blocks, default)
        if input_size is not None:
            check_tiles(input_size, trunk.patch_size, what="input_size")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order '{channel_order}' is not rgb or bgr")
        self.input_size, self.tap_norm, self.drop_border = input_size, tap_norm, drop_border
        self.antialias = antialias
        self.bgr = channel_order == "bgr"
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.patch_size, self.embed_dim, self.num_registers = trunk.patch_size, trunk.embed_dim, trunk.num_registers
        self.frozen_blocks = trunk.depth - trainable_blocks if freeze else 0
        # before LoRA and adapters: a seed gives the pyramid the same weights
        self._add_pyramid(simple, pyramid, pyramid_sizes)
        prepare_trunk(
            trunk,
            freeze=freeze,
            trainable_blocks=trainable_blocks,
            tap_norm=tap_norm,
            lora=lora,
            adapters=adapters,
            last_tap=max(self.layers),
            weights_dtype=weights_dtype,
        )
        self._lora_dropouts = lora_dropouts(trunk)
        self._trunk_trains = any(p.requires_grad for p in trunk.parameters())
        # Recomputing a trunk that does not train would cost time and save nothing (it keeps no activations).
        self.recomputes = activation_checkpointing and self._trunk_trains
        if self.recomputes:
            recompute_blocks(trunk)
        trunk.eval()

    def _add_pyramid(self, simple: bool, pyramid: str, sizes: str = "patch") -> None:
        """Set ``out_channels``, ``strides`` and ``pyramid`` (None: a hierarchical trunk's stages, or ``simple``)."""
        trunk = self.trunk
        if pyramid not in PYRAMIDS:
            raise ValueError(f"pyramid '{pyramid}' is not one of {', '.join(PYRAMIDS)}")
        if trunk.pyramid_taps and (simple or self.layers != trunk.pyramid_taps):
            raise ValueError(
                f"layers and simple=True apply to ViT trunks; a {trunk.family} trunk gives its four stages "
                "as they are (leave layers empty, simple=false)"
            )
        channels, strides = trunk.tap_shapes(self.layers)
        self.pyramid: nn.Module | None = None
        if trunk.pyramid_taps or simple:  # a ConvNeXt's or a Hiera's stages already form the pyramid
            self.out_channels, self.strides = channels, strides
            return
        if sizes != "patch" and pyramid == "vitdet":
            raise ValueError(f"pyramid sizes '{sizes}' need the interpolate or projected pyramid, not vitdet")
        p = strides[0]
        image_sizes = {} if sizes == "patch" else {"patch": p, "sizes": sizes}
        self.pyramid = PYRAMIDS[pyramid](channels[0], **image_sizes)
        self.out_channels = self.pyramid.out_channels
        # Patch 14: strides 3.5, 7, 14, 28 (the 4x level of a 28x28 grid is 112x112 at 392 px);
        # "image" sizes: 4, 8, 16, 32 of the image (floored).
        patch_strides = [int(s) if s % 1 == 0 else s for s in (p / 4, p / 2, p, 2 * p)]
        self.strides = [4, 8, 16, 32] if sizes == "image" else patch_strides

    def lora_parameters(self) -> list[nn.Parameter]:
        """The LoRA adapters' weights (empty without LoRA)."""
        return lora_parameters(self.trunk)

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The block adapters' weights (empty without adapters)."""
        return adapter_parameters(self.trunk)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The trunk's parameters, frozen or not (fine-tuned blocks, LoRA and adapters among them)."""
        return list(self.trunk.parameters())

    def train(self, mode: bool = True) -> PyramidEncoder:
        super().train(mode)
        self.trunk.eval()  # see the module docstring: train-mode RoPE jitter would only add noise
        for m in self._lora_dropouts:
            m.train(mode)
        return self

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {list(x.shape)}")
        s = self.input_size
        if s is not None:  # always, even at that size already (an exact copy): see models.fusion
            x = F.interpolate(x.float(), size=(s, s), mode="bilinear", align_corners=False, antialias=self.antialias)
        H, W = x.shape[-2:]
        p = self.patch_size
        if self.drop_border:
            x = x[..., : H // p * p, : W // p * p]
        else:
            check_tiles((H, W), p, what="input size")
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
    pyramid_sizes: str = "patch",
    tap_norm: bool = True,
    channel_order: str = "rgb",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    drop_border: bool = False,
    input_size: int | None = None,
    antialias: bool = True,
    activation_checkpointing: bool = False,
) -> PyramidEncoder:
    """Load a trunk of any supported family and wrap it in a :class:`PyramidEncoder`, which takes every
    argument but the trunk's source (``model_name``, ``pretrained_path``, ``backend``, ``timm_kwargs``).

    backend "hf": ``pretrained_path`` is a local folder (config.json, model.safetensors,
    preprocessor_config.json) of a DINOv3 or DINOv2 (with or without registers) model, tried before
    the hub id ``model_name``. backend "timm": ``model_name`` is a timm name
    (``vit_base_patch16_dinov3``, ``convnext_tiny.dinov3_lvd1689m``, ``vit_base_patch14_dinov2.lvd142m``,
    ``vit_base_patch14_reg4_dinov2.lvd142m``, ...), ``pretrained_path`` a Meta-format (or timm)
    ``.pth``; without one timm's own hub weights are tried. A SAM2 Hiera loads the same way
    (:func:`encoders.hiera.load_hiera`: a ``facebook/sam2.1-hiera-*`` folder, or timm's ``sam2_hiera_*``
    with Meta's ``.pt``). ``timm_kwargs`` go to ``timm.create_model`` (tests use them for tiny
    architectures). ``mean`` and ``std`` (on the [0, 1] scale, in the order the trunk receives the
    channels) replace the checkpoint's own normalisation.
    """
    settings = dict(locals())  # the arguments as given: all but the trunk's source go to PyramidEncoder
    source = [settings.pop(k) for k in ("model_name", "pretrained_path", "backend", "timm_kwargs")]
    load = load_hiera if is_hiera(model_name, pretrained_path, backend) else load_trunk
    trunk, own_mean, own_std = load(*source)
    settings.update(mean=own_mean if mean is None else mean, std=own_std if std is None else std)
    enc = PyramidEncoder(trunk, **settings)
    n_lora, n_adapter = (sum(p.numel() for p in ps) for ps in (enc.lora_parameters(), enc.adapter_parameters()))
    log.info(
        f"encoder {model_name} ({backend}, {trunk.family}): {trunk.depth} blocks, width {enc.embed_dim}, "
        f"patch {enc.patch_size}, {enc.num_registers} registers, layers {list(enc.layers)}, strides {enc.strides}"
        + (f", LoRA rank {lora.rank} ({n_lora} parameters)" if n_lora else "")
        + (f", {len(trunk.adapters)} adapters ({n_adapter} parameters)" if n_adapter else "")
        + (", activation checkpointing" if enc.recomputes else "")
    )
    return enc
