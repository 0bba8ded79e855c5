"""A config against the encoder it names: what only the checkpoint can tell, read before building."""

from __future__ import annotations

from omegaconf import DictConfig

from config import ConfigError
from encoders.adapters import resolve_blocks
from encoders.loading import Architecture, default_layers, nearest_sizes, read_architecture
from encoders.trunks import Family


def check_encoder(cfg: DictConfig) -> Architecture:
    """Read the encoder's architecture once (its config.json, or timm's model on the meta device)
    and check ``cfg`` against it: image sizes tile into whole patches, tapped and fine-tuned blocks
    exist, adapters sit on blocks that feed a tapped one (``model.encoder.drop_border`` accepts any
    size: the model crops it to whole patches). Returns the :class:`~encoders.loading.Architecture`;
    raises :class:`ConfigError`."""
    enc = cfg.model.encoder
    arch = read_architecture(enc.name, enc.pretrained_path, enc.backend)
    p = arch.patch_size
    for key, sizes in (("data.image_size", [cfg.data.image_size]), ("data.multi_scale", list(cfg.data.multi_scale))):
        for s in sizes:
            if s % p and not enc.drop_border:
                sizes_near = " or ".join(map(str, nearest_sizes(s, p)))
                raise ConfigError(
                    f"config key '{key}': {s} is not a multiple of the encoder's patch size {p} (try {sizes_near})"
                )
    if any(i > arch.depth for i in enc.layers):
        raise ConfigError(
            f"config key 'model.encoder.layers': {list(enc.layers)} goes beyond the encoder's {arch.depth} blocks "
            "(counted from 1; [] taps the default)"
        )
    if enc.trainable_blocks > arch.depth:
        raise ConfigError(
            f"config key 'model.encoder.trainable_blocks': {enc.trainable_blocks} is more than the encoder's "
            f"{arch.depth} blocks"
        )
    blocks = enc.adapter.blocks
    if blocks:
        if arch.family == Family.dinov3_convnext:
            raise ConfigError(
                "config key 'model.encoder.adapter.blocks': adapters act on a ViT's tokens; a dinov3_convnext "
                "encoder has stages, not tokens: set it to []"
            )
        last_tap = max(enc.layers or default_layers(arch.depth))
        try:
            resolve_blocks(blocks if isinstance(blocks, str) else list(blocks), arch.depth, usable=last_tap)
        except ValueError as err:
            raise ConfigError(f"config key 'model.encoder.adapter.blocks': {err}") from None
    return arch
