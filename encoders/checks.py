"""A config against the encoders it names: what only the checkpoint can tell, read before building.

The rules themselves live in :mod:`encoders.rules`; here they meet the architecture read from the
checkpoint, and a broken one becomes a :class:`~config.ConfigError` naming the key.
"""

from __future__ import annotations

from omegaconf import DictConfig

from config import ConfigError
from encoders.adapters import resolve_blocks
from encoders.hiera import is_hiera, read_hiera_architecture
from encoders.loading import Architecture, default_layers, read_architecture
from encoders.rules import SettingError, check_adapter_family, check_depth, check_tiles


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
    if enc.image_size:  # every image is resized to it: the loaded sizes do not matter to this encoder
        sizes = {f"{key}.image_size": [enc.image_size]}
    else:
        sizes = {"data.image_size": [cfg.data.image_size], "data.multi_scale": list(cfg.data.multi_scale)}
    whose = "the encoder's" if which == "encoder" else f"{key}'s"
    for size_key, values in sizes.items() if not enc.drop_border else ():
        for s in values:
            try:
                check_tiles(s, arch.patch_size, whose)
            except ValueError as err:
                raise ConfigError(f"config key '{size_key}': {err}") from None
    blocks = enc.adapter.blocks
    try:
        check_depth(arch.depth, list(enc.layers), enc.freeze, enc.trainable_blocks)
        check_adapter_family(arch.family, blocks)
    except SettingError as err:
        raise ConfigError(err.config_message(key)) from None
    if blocks:
        last_tap = max(enc.layers or default_layers(arch.depth))
        try:
            resolve_blocks(blocks if isinstance(blocks, str) else list(blocks), arch.depth, usable=last_tap)
        except ValueError as err:
            raise ConfigError(f"config key '{key}.adapter.blocks': {err}") from None
    return arch


def check_encoder(cfg: DictConfig) -> Architecture:
    """Read each encoder's architecture once and check ``cfg`` against it: image sizes tile into whole
    patches (``drop_border`` accepts any size: the model crops it to whole patches), tapped and
    fine-tuned blocks exist, blocks that train and adapters feed a tapped one. Returns model.encoder's
    :class:`~encoders.loading.Architecture`; raises :class:`ConfigError`."""
    arch = _check_one(cfg, "encoder")
    if cfg.model.encoder2.name:
        _check_one(cfg, "encoder2")
    return arch
