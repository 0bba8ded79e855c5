"""A trained model back from its checkpoint: for test.py, scripts/export.py and prediction.

checkpoint -> config (its own, or the one given, with overrides) -> precision for this machine ->
pre-build checks -> model -> trained weights. The frozen encoder is read again from
``model.encoder.pretrained_path``; a fingerprint stored in the checkpoint warns when it differs.
A checkpoint is a ``.pth`` of train.py or a folder of scripts/export.py --hf (:mod:`engine.hub`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from build import build_model, check_config
from config import Amp, ConfigError, load_config
from encoders.loading import Architecture
from engine.amp import Precision, resolve_precision
from engine.checkpoint import check_fingerprint, encoder_fingerprint, load_checkpoint, load_weights
from engine.hub import is_hf_folder, load_hf_folder
from models.e2net import E2Net

log = logging.getLogger(__name__)


@dataclass
class Trained:
    cfg: DictConfig  # resolved: train.amp holds the precision chosen for this machine
    model: E2Net  # on ``device``, in eval mode
    precision: Precision
    architecture: Architecture  # the encoder's (patch size, depth, ...)
    device: torch.device


def load_trained(
    ckpt: Path, config: Path | None = None, overrides: Sequence[str] = (), device: torch.device | None = None
) -> Trained:
    """Rebuild the model a checkpoint of ``train.py`` was trained as and load its weights.

    ``config``: a YAML config to use instead of the checkpoint's own; ``overrides``: ``key=value``
    on top. The stored ``train.amp`` was resolved for the training machine, so unless a config or
    an override says otherwise it is picked again for this one (``device``: CUDA when present).
    Raises ``CheckpointError`` / ``ConfigError`` (one line) for anything a user can fix.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    state = read_trained(ckpt, required=("model",) if config else ("model", "config"))
    cfg = load_config(config or state["config"], list(overrides))
    if not config and not any(o.partition("=")[0].strip() == "train.amp" for o in overrides):
        cfg.train.amp = Amp.auto
    precision = resolve_precision(cfg, device)
    try:
        architecture = check_config(cfg)
        model = build_model(cfg)
    except (ValueError, ImportError) as err:  # how the encoder builder reports impossible settings
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"cannot build the model of this config: {err}") from None
    check_fingerprint(state, ckpt, encoder_fingerprint(model, cfg))
    load_weights(model, state["model"], ckpt)
    log.info("loaded %s (epoch %s, step %s) on %s", ckpt, state.get("epoch"), state.get("step"), device)
    return Trained(cfg, model.to(device).eval(), precision, architecture, device)


def init_from(model: E2Net, cfg: DictConfig) -> None:
    """``train.init_from``: the trained weights of a checkpoint or export.py --hf folder into ``model``,
    the starting point of a new run. Every weight must be there but the temporal module's (an image
    model starting a clip model: that module starts as the identity)."""
    path = Path(cfg.train.init_from)
    state = read_trained(path, required=("model",))
    check_fingerprint(state, path, encoder_fingerprint(model, cfg))
    advice = (
        "train.init_from needs a checkpoint of this model: the model.* settings it was trained with "
        "(model.temporal aside), or drop train.init_from to start from the pretrained encoder alone"
    )
    load_weights(model, state["model"], path, optional=("temporal.",), advice=advice)
    fresh = [k for k in model.trainable_state_dict() if k not in state["model"]]
    log.info(
        "initialised from %s (%d weights; %d new, starting as the identity)", path, len(state["model"]), len(fresh)
    )


def read_trained(ckpt: Path, required: Sequence[str] = ("model", "config")) -> dict:
    """The checkpoint's contents: a train.py ``.pth`` or an export.py --hf folder, read alike."""
    return load_hf_folder(ckpt) if is_hf_folder(ckpt) else load_checkpoint(ckpt, required=required)
