"""E2Net model and loss, built from the ``model:`` and ``loss:`` config sections.

``build_model(cfg)`` and ``build_loss(cfg)`` are the only places that read the config; every
module takes explicit arguments and can be built and tested alone.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from config import Amp, Decoder, WeightsDtype
from models.e2net import E2Net
from models.heads import E2NetDecoder
from models.linear import LinearDecoder
from models.losses import CODLoss
from models.reference import E2NetRefDecoder

__all__ = [
    "E2Net",
    "E2NetDecoder",
    "E2NetRefDecoder",
    "LinearDecoder",
    "CODLoss",
    "build_model",
    "build_loss",
    "frozen_weights_dtype",
]


def build_model(cfg: DictConfig) -> E2Net:
    """Encoder + CAEM + decoder from ``cfg.model`` (a full config from ``config.load_config``)."""
    # Imported here: caem.py imports models.blocks, so a top-level import would be circular.
    from caem import CAEM
    from dinov3_encoder import LoRA, build_dinov3_encoder

    m, e = cfg.model, cfg.model.encoder
    encoder = build_dinov3_encoder(
        model_name=e.name,
        pretrained_path=e.pretrained_path,
        freeze=e.freeze,
        simple=e.simple,
        layers=tuple(e.layers) or None,
        backend=e.backend,
        trainable_blocks=e.trainable_blocks,
        weights_dtype=frozen_weights_dtype(e.weights_dtype, cfg.train.amp),
        lora=LoRA(e.lora.rank, e.lora.alpha, e.lora.dropout, tuple(e.lora.targets)),
        pyramid=e.pyramid,
    )
    levels = len(encoder.out_channels)
    if m.decoder == Decoder.linear:
        return E2Net(
            encoder, None, LinearDecoder(encoder.out_channels, levels, norm=m.norm), m.channels_last, m.compile
        )
    caem = CAEM(encoder.out_channels, m.channels, m.norm, levels, align=m.caem_align, reduce_norm=m.caem_reduce_norm)
    if m.decoder == Decoder.e2net_ref:
        decoder = E2NetRefDecoder(m.channels, levels, heads=m.context_heads, norm=m.norm)
    else:  # Decoder.e2net
        decoder = E2NetDecoder(m.channels, heads=m.context_heads, norm=m.norm)
    return E2Net(encoder, caem, decoder, channels_last=m.channels_last, compile=m.compile)


def frozen_weights_dtype(weights_dtype: WeightsDtype, amp: Amp) -> torch.dtype:
    """Storage dtype of the frozen encoder weights from ``model.encoder.weights_dtype`` and the
    resolved ``train.amp``.

    Under bf16 autocast every matmul casts its float32 weight to bf16 on every call (autocast
    caches casts only for weights that train); storing the frozen weights in bf16 gives the same
    products without those copies, and halves their memory, on CPU as on CUDA
    (docs/performance.md). Without bf16 autocast (``off``, ``fp16``) ``auto`` keeps float32.
    """
    if amp == Amp.auto:
        raise ValueError("train.amp=auto must be resolved for the device first (engine.amp.resolve_precision)")
    if weights_dtype == WeightsDtype.auto:
        return torch.bfloat16 if amp == Amp.bf16 else torch.float32
    return getattr(torch, weights_dtype)


def build_loss(cfg: DictConfig) -> CODLoss:
    """``CODLoss`` with the terms, weights and switches of ``cfg.loss``."""
    lo = cfg.loss
    return CODLoss(
        bce=lo.bce,
        iou=lo.iou,
        dice=lo.dice,
        edge=lo.edge,
        sobel=lo.sobel,
        side=lo.side,
        weighted=lo.weighted,
        pooled=lo.pooled,
        coarse_terms=[str(t) for t in lo.coarse_terms],
        coarse=lo.coarse,
    )
