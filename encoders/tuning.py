"""What trains in a trunk, and the dtype its frozen weights are stored in.

A trunk trains whole (``freeze=False``) or not at all, or only its last ``trainable_blocks``; LoRA
(:mod:`encoders.lora`) and block adapters (:mod:`encoders.adapters`) go on a frozen one. Frozen
float weights are then stored in ``weights_dtype`` (``torch.bfloat16`` pays off only under bf16
autocast); whatever trains stays float32. The settings' rules are :mod:`encoders.rules`'.
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.adapters import Adapters, add_adapters
from encoders.lora import LoRA, add_lora
from encoders.trunks import Trunk


def _inputs_in_own_dtype(module: nn.Module, args: tuple, kwargs: dict):
    """A trainable float32 block behind bf16-stored frozen blocks: without autocast, feed it float32."""
    weight = next(module.parameters())
    if torch.is_autocast_enabled(weight.device.type):
        return None
    dtype = weight.dtype

    def cast(t):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def prepare_trunk(
    trunk: Trunk,
    *,
    freeze: bool,
    trainable_blocks: int,
    tap_norm: bool,
    lora: LoRA | None,
    adapters: Adapters | None,
    last_tap: int,
    weights_dtype: torch.dtype,
) -> None:
    """Freeze ``trunk`` (unless ``freeze=False``) but its last ``trainable_blocks`` and, when the taps
    go through it (``tap_norm``), its final norm; add ``lora`` and ``adapters`` on the blocks that feed
    ``last_tap`` (counted from 1); then store every frozen float weight in ``weights_dtype``."""
    trunk.requires_grad_(not freeze)
    if freeze and trainable_blocks:
        # the final norm trains with the last blocks when the taps go through it (unused, it would get no gradient)
        for m in [*list(trunk.blocks)[trunk.depth - trainable_blocks :], trunk.norm if tap_norm else None]:
            if m is not None:
                m.requires_grad_(True)
                m.register_forward_pre_hook(_inputs_in_own_dtype, with_kwargs=True)
    for p in trunk.never_trained():
        p.requires_grad_(False)
    if lora is not None:  # before the cast below: peft gives adapters the dtype of the layer they wrap
        add_lora(trunk, lora, last_tap)
    if adapters is not None:  # float32 whatever the cast below does (they train)
        add_adapters(
            trunk,
            adapters.blocks,
            adapters.reduction,
            adapters.init_scale,
            usable=last_tap,
            position=adapters.position,
            form=adapters.form,
        )
    for p in trunk.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(weights_dtype)
