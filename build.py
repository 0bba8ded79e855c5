"""The one builder: encoder, CAEM, decoder and loss from a config (as segment-anything's ``build_sam.py``).

Everything below translates config keys into explicit constructor arguments; no module it builds
reads the config. :func:`check_config` runs every check that needs no model before anything is built.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf

from caem import CAEM
from config import Amp, Decoder, Init, LossTerm, WeightsDtype, resolved_amp
from config_checks import check_keys
from dinov3_encoder import PyramidEncoder, build_dinov3_encoder
from encoders.adapters import Adapters
from encoders.checks import check_encoder
from encoders.loading import Architecture
from encoders.lora import LoRA
from models.e2net import E2Net
from models.fusion import FusedEncoder, PyramidFusion, fusion_sources
from models.heads import E2NetDecoder
from models.init import published_init_
from models.linear import LinearDecoder
from models.losses import CODLoss
from models.reference import E2NetRefDecoder
from models.reference_dinov2 import E2NetDinov2Decoder
from models.temporal import ClipLoss, TemporalAttention
from models.unet import UNetDecoder

_passed: str | None = None  # _content() of the last config check_config passed


def _content(cfg: DictConfig) -> str:
    """What the key rules read: the whole config but ``train.amp``, which ``resolve_precision`` fills
    in between :func:`check_config` and :func:`build_model` (train.py, engine/trained.py) and which no
    rule reads."""
    content = OmegaConf.to_container(cfg, enum_to_str=True)
    content["train"].pop("amp", None)
    return repr(content)


def check_config(cfg: DictConfig) -> Architecture:
    """Keys that contradict each other, then the config against the encoder's checkpoint (sizes tile
    into patches, tapped blocks exist). Returns the encoder's architecture; raises ``ConfigError``.

    Remembers the last config that passed (its content, not the object), so that :func:`build_model`
    does not check it again."""
    global _passed
    check_keys(cfg)
    architecture = check_encoder(cfg)
    _passed = _content(cfg)
    return architecture


def frozen_weights_dtype(weights_dtype: WeightsDtype, amp: Amp) -> torch.dtype:
    """Storage dtype of the frozen encoder weights from ``model.encoder.weights_dtype`` and the
    resolved ``train.amp``.

    Under bf16 autocast every matmul casts its float32 weight to bf16 on every call (autocast
    caches casts only for weights that train); storing the frozen weights in bf16 gives the same
    products without those copies, and halves their memory, on CPU as on CUDA
    (docs/performance.md). Without bf16 autocast (``off``, ``fp16``) ``auto`` keeps float32.
    """
    amp = resolved_amp(amp)
    if weights_dtype == WeightsDtype.auto:
        return torch.bfloat16 if amp == Amp.bf16 else torch.float32
    return getattr(torch, weights_dtype)


def build_encoder(cfg: DictConfig, which: str = "encoder") -> PyramidEncoder:
    """The encoder of ``cfg.model.<which>`` (``encoder`` or ``encoder2``), its frozen weights stored for
    ``cfg.train.amp``."""
    e = cfg.model[which]
    return build_dinov3_encoder(
        model_name=e.name,
        pretrained_path=e.pretrained_path,
        backend=str(e.backend),
        freeze=e.freeze,
        simple=e.simple,
        layers=tuple(e.layers) or None,
        trainable_blocks=e.trainable_blocks,
        weights_dtype=frozen_weights_dtype(e.weights_dtype, cfg.train.amp),
        lora=LoRA(rank=e.lora.rank, alpha=e.lora.alpha, dropout=e.lora.dropout, targets=tuple(e.lora.targets)),
        adapters=Adapters(
            blocks=e.adapter.blocks if isinstance(e.adapter.blocks, str) else tuple(e.adapter.blocks),
            reduction=e.adapter.reduction,
            init_scale=e.adapter.init_scale,
            position=str(e.adapter.position),
            form=str(e.adapter.form),
        ),
        pyramid=str(e.pyramid),
        pyramid_sizes=str(e.pyramid_sizes),
        tap_norm=e.tap_norm,
        channel_order=str(e.channel_order),
        # the config's 0..255 statistics on the [0, 1] scale of the model's input
        mean=[v / 255 for v in e.pixel_mean] or None,
        std=[v / 255 for v in e.pixel_std] or None,
        drop_border=e.drop_border,
        input_size=e.image_size or None,
        antialias=e.antialias,
        activation_checkpointing=e.activation_checkpointing,
    )


def build_fused_encoder(cfg: DictConfig) -> FusedEncoder:
    """model.encoder2's levels with model.encoder's maps fused into them (``model.fusion``), at
    ``model.channels`` per level."""
    m = cfg.model
    encoder2, encoder = build_encoder(cfg, "encoder2"), build_encoder(cfg, "encoder")
    sources = fusion_sources(str(m.fusion), len(encoder2.out_channels), len(encoder.out_channels))
    fusion = PyramidFusion(encoder2.out_channels, encoder.out_channels, m.channels, sources)
    if m.compile:  # as E2Net compiles CAEM and the decoder: in place, one static graph per size
        fusion.compile(dynamic=False)
    return FusedEncoder(encoder2, encoder, fusion)


def build_model(cfg: DictConfig) -> E2Net:
    """Encoder + CAEM + decoder from ``cfg.model`` (a full config from ``config.load_config``).

    Checks the keys that contradict each other (``ConfigError``) unless :func:`check_config` has just
    passed this config."""
    if _content(cfg) != _passed:
        check_keys(cfg)
    m, norm = cfg.model, str(cfg.model.norm)
    encoder = build_fused_encoder(cfg) if m.encoder2.name else build_encoder(cfg)
    levels = len(encoder.out_channels)
    if m.decoder in (Decoder.linear, Decoder.unet):  # no CAEM: the encoder's levels straight into the decoder
        if m.decoder == Decoder.unet:  # SAM2-UNeXT's, on the fused levels
            decoder = UNetDecoder(m.channels, levels, norm=norm)
        else:
            decoder = LinearDecoder(encoder.out_channels, levels, norm=norm)
            if m.init == Init.published:
                published_init_([decoder])
        temporal = build_temporal(cfg, encoder.out_channels)
        return E2Net(encoder, None, decoder, channels_last=m.channels_last, compile=m.compile, temporal=temporal)
    caem = CAEM(
        encoder.out_channels,
        out_channels=m.channels,
        norm=norm,
        num_levels=levels,
        align=str(m.caem_align),
        reduce_norm=m.caem_reduce_norm,
        se_bias=m.caem_se_bias,
        se=str(m.caem_se),
        out_conv=m.caem_out_conv,
    )
    keep_conv_bias = []
    if m.decoder == Decoder.e2net_ref:
        decoder = E2NetRefDecoder(m.channels, levels, heads=m.context_heads, norm=norm, coarse_sigmoid=m.coarse_sigmoid)
        keep_conv_bias = [decoder.lfsm, decoder.cfzm]  # the published initialize() never reset these
    elif m.decoder == Decoder.e2net_dinov2:
        decoder = E2NetDinov2Decoder(m.channels, heads=m.context_heads, norm=norm)
    else:
        decoder = E2NetDecoder(m.channels, heads=m.context_heads, norm=norm)
    if m.init == Init.published:
        published_init_([caem, decoder], keep_conv_bias=keep_conv_bias)
    temporal = build_temporal(cfg, [m.channels] * levels)
    return E2Net(encoder, caem, decoder, channels_last=m.channels_last, compile=m.compile, temporal=temporal)


def build_temporal(cfg: DictConfig, channels: list[int]) -> TemporalAttention | None:
    """``model.temporal``'s attention across a clip's frames on the maps the decoder reads, or None (off)."""
    t = cfg.model.temporal
    return TemporalAttention(channels, t.levels, t.heads) if t.levels else None


def build_loss(cfg: DictConfig) -> CODLoss | ClipLoss:
    """``CODLoss`` with the terms, weights and switches of ``cfg.loss``; on clips (``data.clip`` > 1)
    read on the frames that have a mask."""
    lo = cfg.loss
    loss = CODLoss(
        weights={t: lo[t] for t in LossTerm},
        side=lo.side,
        weighted=lo.weighted,
        bce_weighted=lo.bce_weighted,
        pooled=lo.pooled,
        coarse_terms=[str(t) for t in lo.coarse_terms],
        coarse=lo.coarse,
        smooth=lo.smooth,
        sobel_peak=lo.sobel_peak,
        sobel_border=lo.sobel_border,
    )
    return ClipLoss(loss) if cfg.data.clip > 1 else loss
