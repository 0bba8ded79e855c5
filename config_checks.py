"""Config keys that are valid alone but contradict each other.

Run (:func:`check_keys`) by ``build.check_config`` (with the checks against the encoder's checkpoint) before anything is
built, and by ``build.build_model`` for a config nobody checked; :func:`config.load_config` checks
each key alone. An encoder section's rules are the encoder's own (:mod:`encoders.rules`), reported
here under the section's keys.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from config import (
    AugmentOn,
    BestMetric,
    CaemAlign,
    ConfigError,
    Decoder,
    Fusion,
    LossTerm,
    MaskInterpolation,
    Pyramid,
    PyramidSizes,
    Scheduler,
)
from encoders.rules import SettingError, check_taps, check_training
from models.losses import NO_TERM, weighted_terms


def _levels(c: DictConfig) -> int:
    """Levels CAEM and the decoder receive: the fused pyramid's four, or model.encoder's maps."""
    return 4 if c.model.encoder2.name else len(c.model.encoder.layers) or 4


def _adapter_blocks_form(blocks) -> bool:
    """``"all"`` or a list of block indices >= 0 (their upper bound is the encoder's: encoders.checks)."""
    if blocks == "all":
        return True
    return OmegaConf.is_list(blocks) and all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks)


def _encoder_rules(which: str) -> list[tuple[str, Callable[[DictConfig], bool], str]]:
    """The rules of one encoder section (model.encoder, model.encoder2) that only the config has:
    the same keys, the same rules. The encoder's own rules are :func:`_check_encoder_settings`'."""
    k = f"model.{which}"
    e = lambda c: c.model[which]  # noqa: E731
    return [
        (f"{k}.adapter.blocks", lambda c: _adapter_blocks_form(e(c).adapter.blocks),
         "give a list of 0-based block indices (e.g. [0, 1, 2]), 'all', or [] for no adapters"),
        (f"{k}.pyramid", lambda c: not e(c).simple or e(c).pyramid == Pyramid.vitdet,
         f"has no effect with {k}.simple=true (all levels at stride p): set simple=false or leave it at vitdet"),
        (f"{k}.pyramid_sizes", lambda c: e(c).pyramid_sizes == PyramidSizes.patch or e(c).pyramid != Pyramid.vitdet,
         f"image-stride sizes resize every level: set {k}.pyramid to projected or interpolate"),
        (f"{k}.pixel_mean", lambda c: len(e(c).pixel_mean) == len(e(c).pixel_std) and len(e(c).pixel_std) in (0, 3),
         f"give three values, and three for {k}.pixel_std (or leave both empty for the checkpoint's own)"),
    ]  # fmt: skip


def _check_encoder_settings(cfg: DictConfig, which: str) -> None:
    """The encoder's own rules (:mod:`encoders.rules`: taps, what trains) on the section ``model.<which>``."""
    e = cfg.model[which]
    try:
        check_taps(list(e.layers), e.simple)
        check_training(e.freeze, e.trainable_blocks, e.lora.rank, e.adapter.blocks)
    except SettingError as err:
        raise ConfigError(err.config_message(f"model.{which}")) from None


# Keys that are valid alone but contradict each other: (the key to change, holds when, why).
RULES: list[tuple[str, Callable[[DictConfig], bool], str]] = [
    *_encoder_rules("encoder"),
    *_encoder_rules("encoder2"),
    ("model.encoder2.simple", lambda c: not c.model.encoder2.name or not c.model.encoder2.simple,
     "the fused pyramid keeps model.encoder2's four levels at their own strides: set simple=false"),
    ("model.encoder.simple",
     lambda c: not c.model.encoder2.name or c.model.fusion != Fusion.concat or c.model.encoder.simple,
     "model.fusion=concat reads only model.encoder's deepest map, so a pyramid on it would never train: "
     "set model.encoder.simple=true (and model.encoder.layers=[<its last block>] to tap only that one)"),
    ("model.fusion", lambda c: c.model.fusion != Fusion.levels or len(c.model.encoder.layers) in (0, 4),
     "levels fuses model.encoder's map i into level i: model.encoder.layers must give four (or [])"),
    ("model.channels", lambda c: c.model.channels % 8 == 0, "must be a multiple of 8"),
    ("model.context_heads", lambda c: c.model.channels % c.model.context_heads == 0, "must divide model.channels"),
    ("model.temporal.heads", lambda c: c.model.channels % c.model.temporal.heads == 0, "must divide model.channels"),
    ("model.temporal.levels", lambda c: c.model.temporal.levels <= _levels(c),
     "the pyramid has fewer levels (model.encoder.layers): give at most that many"),
    ("model.decoder", lambda c: c.model.decoder != Decoder.e2net or _levels(c) == 4,
     "e2net wires exactly 4 levels (strides 4/8/16/32): model.encoder.layers must give four"),
    ("model.decoder", lambda c: c.model.decoder != Decoder.e2net_ref or _levels(c) >= 2,
     "e2net_ref needs at least 2 levels (the finest as CCM query, the deepest for LFSM)"),
    ("model.decoder", lambda c: c.model.decoder != Decoder.e2net_dinov2 or _levels(c) == 4,
     "e2net_dinov2 wires exactly 4 levels: model.encoder.layers must give four"),
    ("model.decoder", lambda c: c.model.decoder != Decoder.unet or _levels(c) >= 2,
     "unet needs at least 2 levels: model.encoder.layers must give two or more"),
    ("model.caem_align", lambda c: c.model.decoder not in (Decoder.linear, Decoder.unet) or c.model.caem_align == CaemAlign.own,
     "applies to the decoders with a CAEM (model.decoder=e2net, e2net_ref or e2net_dinov2), not linear or unet"),
    ("loss", lambda c: weighted_terms({t: c.loss[t] for t in LossTerm}), NO_TERM),
    ("loss.coarse_terms", lambda c: len(set(c.loss.coarse_terms)) == len(c.loss.coarse_terms), "lists a term twice"),
    ("loss.coarse_terms", lambda c: not c.loss.coarse_terms or c.model.decoder not in (Decoder.linear, Decoder.unet),
     "model.decoder=linear or unet has no coarse map: leave loss.coarse_terms empty"),
    ("data.scale", lambda c: len(c.data.scale) == 2 and c.data.scale[0] <= c.data.scale[1],
     "must be [min, max] with min <= max"),
    ("data.train", lambda c: len(c.data.train) > 0, "list at least one training folder (relative to data.root)"),
    ("train.betas", lambda c: len(c.train.betas) == 2, "give two values, e.g. [0.9, 0.999]"),
    ("train.scheduler", lambda c: c.train.scheduler != Scheduler.plateau or c.data.val_fraction > 0 or c.data.val_set,
     "plateau steps on the validation loss, but there is no validation split: set data.val_fraction > 0 "
     "(or data.val_set), or use train.scheduler=cosine"),
    ("train.ddp_static_graph", lambda c: not c.train.ddp_static_graph or c.train.accum_steps == 1,
     "DDP's static_graph breaks gradient accumulation (no_sync) in torch 2.14: set train.accum_steps=1 or leave it false"),
    ("train.warmup_epochs", lambda c: c.train.scheduler != Scheduler.plateau or c.train.warmup_epochs == 0,
     "warm-up belongs to train.scheduler=cosine; set it to 0 with plateau"),
    ("model.coarse_sigmoid", lambda c: not c.model.coarse_sigmoid or c.model.decoder == Decoder.e2net_ref,
     "the double sigmoid belongs to the published decoder (model.decoder=e2net_ref)"),
    ("train.best_metric",
     lambda c: not c.data.val_augment or c.train.best_metric in (BestMetric.loss, BestMetric.train_loss),
     "data.val_augment validates on cropped and flipped images, which the masks on disk do not match: "
     "only a loss can choose the checkpoint (train.best_metric=loss or train_loss)"),
    ("eval.resize_logits", lambda c: not c.eval.resize_logits or not (c.eval.tta.hflip or c.eval.tta.scales),
     "test-time augmentation averages probabilities at the input size: turn eval.tta off or resize_logits off"),
    ("eval.tta", lambda c: c.data.clip == 1 or not (c.eval.tta.hflip or c.eval.tta.scales),
     "test-time augmentation transforms single images: turn it off for a clip model (data.clip > 1)"),
    ("data.augment_on", lambda c: c.data.augment_on != AugmentOn.device or not c.data.soft_masks and c.data.reduced_decode,
     "the device path decodes each image once, area-resized and binarised: set data.augment_on=workers "
     "for data.soft_masks=true or data.reduced_decode=false"),
    ("data.augment_on",
     lambda c: c.data.augment_on != AugmentOn.device or c.data.mask_interpolation == MaskInterpolation.bilinear,
     "the device path resamples masks bilinearly: set data.augment_on=workers for data.mask_interpolation=bicubic"),
    ("data.cache", lambda c: not c.data.cache or not c.data.soft_masks and c.data.reduced_decode,
     "the cache stores pre-resized images and 1-bit masks: set data.cache=false "
     "for data.soft_masks=true or data.reduced_decode=false"),
]  # fmt: skip


def check_keys(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first rule ``cfg`` breaks: each encoder section's own rules
    (:mod:`encoders.rules`), then :data:`RULES`."""
    for which in ("encoder", "encoder2"):
        _check_encoder_settings(cfg, which)
    for key, holds, why in RULES:
        if not holds(cfg):
            raise ConfigError(f"config key '{key}': {why}")
