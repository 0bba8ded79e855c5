"""A config against the encoders it names: what only the checkpoint can tell, read before building."""

from __future__ import annotations

from omegaconf import DictConfig

from config import ConfigError
from encoders.adapters import resolve_blocks
from encoders.hiera import is_hiera, read_hiera_architecture
from encoders.loading import Architecture, default_layers, nearest_sizes, read_architecture
from encoders.trunks import Family


def encoder_architecture(enc: DictConfig) -> Architecture:
    """The architecture of one encoder section (its config.json, or timm's model on the meta device)."""
    read = read_hiera_architecture if is_hiera(enc.name, enc.pretrained_path, enc.backend) else read_architecture
    return read(enc.name, enc.pretrained_path, enc.backend)


def _check_one(cfg: DictConfig, which: str) -> Architecture:
    enc, key = cfg.model[which], f"model.{which}"
    try:
        arch = encoder_architecture(enc)
    except FileNotFoundError as err:  # the messages name model.encoder's key; say which encoder it is
        raise FileNotFoundError(f"{key}: {str(err).replace('model.encoder.', f'{key}.')}") from None
    p = arch.patch_size
    if enc.image_size:  # every image is resized to it: the loaded sizes do not matter to this encoder
        sizes = {f"{key}.image_size": [enc.image_size]}
    else:
        sizes = {"data.image_size": [cfg.data.image_size], "data.multi_scale": list(cfg.data.multi_scale)}
    whose = "the encoder's" if which == "encoder" else f"{key}'s"
    for size_key, values in sizes.items():
        for s in values:
            if s % p and not enc.drop_border:
                sizes_near = " or ".join(map(str, nearest_sizes(s, p)))
                raise ConfigError(
                    f"config key '{size_key}': {s} is not a multiple of {whose} patch size {p} (try {sizes_near})"
                )
    if any(i > arch.depth for i in enc.layers):
        raise ConfigError(
            f"config key '{key}.layers': {list(enc.layers)} goes beyond the encoder's {arch.depth} blocks "
            "(counted from 1; [] taps the default)"
        )
    if enc.trainable_blocks > arch.depth:
        raise ConfigError(
            f"config key '{key}.trainable_blocks': {enc.trainable_blocks} is more than the encoder's "
            f"{arch.depth} blocks"
        )
    blocks = enc.adapter.blocks
    if blocks:
        if arch.family == Family.dinov3_convnext:
            raise ConfigError(
                f"config key '{key}.adapter.blocks': adapters act on a ViT's tokens; a dinov3_convnext "
                "encoder has stages, not tokens: set it to []"
            )
        last_tap = max(enc.layers or default_layers(arch.depth))
        try:
            resolve_blocks(blocks if isinstance(blocks, str) else list(blocks), arch.depth, usable=last_tap)
        except ValueError as err:
            raise ConfigError(f"config key '{key}.adapter.blocks': {err}") from None
    return arch


def check_encoder(cfg: DictConfig) -> Architecture:
    """Read each encoder's architecture once and check ``cfg`` against it: image sizes tile into whole
    patches (``drop_border`` accepts any size: the model crops it to whole patches), tapped and
    fine-tuned blocks exist, adapters sit on blocks that feed a tapped one. Returns model.encoder's
    :class:`~encoders.loading.Architecture`; raises :class:`ConfigError`."""
    arch = _check_one(cfg, "encoder")
    if cfg.model.encoder2.name:
        _check_one(cfg, "encoder2")
    return arch
