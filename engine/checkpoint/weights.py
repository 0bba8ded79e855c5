"""A checkpoint's weights, loaded so that nothing is silently wrong: no diverged (non-finite)
tensor, no weight dropped because this config freezes it, and a loud warning when the frozen
encoder differs from the one the checkpoint was trained on (its fingerprint is stored in every
checkpoint; the frozen weights themselves are not).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from config import first_line
from engine.checkpoint.files import CheckpointError

log = logging.getLogger(__name__)


RESUME_ADVICE = "use the config it was trained with (config.yaml beside it), or start fresh with train.resume="


def load_weights(
    model: nn.Module, weights: Any, path: Path, optional: tuple[str, ...] = (), advice: str = RESUME_ADVICE
) -> None:
    """Load a checkpoint's ``model`` entry, never discarding any of it and never loading a diverged one.

    Refused (``CheckpointError`` naming the file): an entry that is not a dict of tensors, a non-finite
    tensor, weights of parameters this config keeps frozen (they would be dropped silently), or
    weights that do not fit the model: every key of ``model.trainable_state_dict()`` must be there,
    with its shape, and nothing else; ``optional``: key prefixes the entry may lack (those weights keep
    the model's own values); ``advice``: how to fix a checkpoint that does not fit, ending the error.
    """
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(
            f"checkpoint '{path}': its 'model' entry is a {type(weights).__name__}, not a dict of tensors; "
            f"use a checkpoint written by train.py"
        )
    bad = first_nonfinite(weights)
    if bad:
        raise CheckpointError(
            f"checkpoint '{path}': weight '{bad}' holds NaN or Inf (the run that wrote it had diverged); "
            f"use an earlier checkpoint or train again with a lower train.lr"
        )
    frozen = model.frozen_keys()
    dropped = sorted(set(weights) & frozen)
    if dropped:
        raise CheckpointError(
            f"checkpoint '{path}' holds {len(dropped)} encoder weights that this config keeps frozen "
            f"({', '.join(dropped[:3])}{', ...' if len(dropped) > 3 else ''}): loading would discard them. "
            f"Use the model.encoder settings it was trained with (freeze, trainable_blocks): drop the override"
        )
    own = model.state_dict()
    reshaped = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if reshaped:
        k = reshaped[0]
        raise CheckpointError(
            f"checkpoint '{path}' does not fit this model/config ({len(reshaped)} weights of another shape, e.g. "
            f"'{k}': {tuple(weights[k].shape)} in it, {tuple(own[k].shape)} here); {advice}"
        )
    try:
        result = model.load_state_dict(dict(weights), strict=False)  # the frozen weights are not in it
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit this model/config ({first_line(err, with_type=True)}); {advice}"
        ) from None
    missing = [k for k in result.missing_keys if k not in frozen and not (optional and k.startswith(optional))]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit this model/config (missing {len(missing)}: {missing[:5]}; "
            f"unexpected {len(result.unexpected_keys)}: {result.unexpected_keys[:5]}): was it trained with another "
            f"model.decoder, model.channels, model.encoder.simple or model.encoder.trainable_blocks? {advice}"
        )


def first_nonfinite(weights: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or Inf, else None (one host sync)."""
    names = [k for k, v in weights.items() if v.is_floating_point() and v.numel()]
    if not names:
        return None
    finite = torch.stack([torch.isfinite(weights[k]).all().cpu() for k in names])
    return None if bool(finite.all()) else names[int((~finite).nonzero()[0])]


def encoder_fingerprint(model: nn.Module, cfg) -> dict[str, Any]:
    """What the frozen encoder was: its config and a hash of ~256 values of every frozen tensor.

    Values are rounded to bfloat16 first, so storing the frozen weights in bfloat16 or float32
    (``model.encoder.weights_dtype``) gives the same fingerprint.
    """
    enc = cfg.model.encoder
    frozen = model.frozen_keys()
    state = model.state_dict()
    return {
        "name": str(enc.name),
        "backend": str(enc.backend),
        "pretrained_path": str(enc.pretrained_path),
        "frozen_tensors": len(frozen),
        "weights_hash": tensors_hash({k: state[k] for k in frozen}),
    }


def tensors_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """16 hex digits from the names, shapes and ~256 values (rounded to bfloat16) of each tensor."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k].detach()
        sample = v.flatten()[:: max(1, v.numel() // 256)][:256].to(torch.bfloat16).float().cpu()
        h.update(f"{k}{tuple(v.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def check_fingerprint(ckpt: Mapping[str, Any], path: Path, now: dict[str, Any]) -> None:
    """Warn loudly when the frozen encoder (fingerprint ``now``) differs from the one the checkpoint
    was trained on."""
    stored = ckpt.get("encoder")
    if not isinstance(stored, dict) or "weights_hash" not in stored:
        log.warning("checkpoint '%s' records no encoder fingerprint: the frozen encoder cannot be checked", path)
        return
    if stored["weights_hash"] != now["weights_hash"]:
        log.warning(
            "!!! THE FROZEN ENCODER DIFFERS from the one checkpoint '%s' was trained on (trained on %s at %s, "
            "%s frozen tensors, hash %s; now %s at %s, %s frozen tensors, hash %s): its predictions will be "
            "wrong. Point model.encoder.pretrained_path at the encoder it was trained with !!!",
            path,
            stored.get("name"),
            stored.get("pretrained_path"),
            stored.get("frozen_tensors"),
            stored["weights_hash"],
            now["name"],
            now["pretrained_path"],
            now["frozen_tensors"],
            now["weights_hash"],
        )
