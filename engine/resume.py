"""What a training checkpoint holds, and putting it back: the two halves of an exact resume.

Only the trainable weights are stored (``E2Net.trainable_state_dict()``); the frozen DINOv3 is read
again from ``model.encoder.pretrained_path``, which the stored config names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from config import ConfigError, to_dict
from engine.checkpoint import CheckpointError, library_versions
from engine.rng import set_rng_state

log = logging.getLogger(__name__)

# What train.py needs from a checkpoint to continue (best.pth holds only the weights and metrics).
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step")
BEST_KEYS = ("model", "config", "epoch", "step", "best", "metrics", "versions")


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    cfg,
    epoch: int,
    step: int,
    best: float | None,
    metrics: dict | None,
    rng: list[dict],
) -> dict[str, Any]:
    """Everything a resume needs. ``epoch``: epochs completed; ``rng``: every rank's generator states."""
    return {
        "model": model.trainable_state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "best": best,
        "metrics": metrics,
        "config": to_dict(cfg),
        "rng": rng,
        "versions": library_versions(),
    }


def find_resume(resume: str, run_dir: Path) -> Path | None:
    """``train.resume``: "auto" -> <run>/last.pth if present; "" -> start fresh; else a path that must exist."""
    if resume == "auto":
        last = run_dir / "last.pth"
        return last if last.is_file() else None
    if resume and not Path(resume).is_file():
        raise ConfigError(
            f"config key 'train.resume': checkpoint '{resume}' not found "
            f"(give an existing .pth, 'auto', or '' to start fresh)"
        )
    return Path(resume) if resume else None


def restore_training_state(
    ckpt: dict,
    path: Path,
    cfg,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler: torch.amp.GradScaler,
    rank: int,
    world_size: int,
) -> None:
    """Load a :func:`training_state` into freshly built objects; a checkpoint that does not fit the
    model or optimizer raises :class:`CheckpointError` naming the file."""
    changed = changed_keys(ckpt.get("config") or {}, to_dict(cfg))
    if changed:
        log.warning("resuming with config keys that differ from the checkpoint's: %s", ", ".join(changed))
    try:
        model.load_trainable_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        msg = str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint '{path}' does not fit this model/config ({msg}); resume with the "
            f"config it was trained with (config.yaml beside it) or start fresh with "
            f"train.resume="
        ) from None
    if set(ckpt["scheduler"]) != set(scheduler.state_dict()):  # e.g. a cosine checkpoint for a plateau run
        raise CheckpointError(
            f"checkpoint '{path}' holds another learning-rate scheduler than train.scheduler="
            f"{cfg.train.scheduler}; resume with the config it was trained with or start fresh with train.resume="
        )
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"] and scaler.is_enabled():  # empty when the run that wrote it did not use float16
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng") or []
    if len(rng) == world_size:
        set_rng_state(rng[rank])
    else:
        log.warning(
            "checkpoint has random states for %d process(es), this run has %d: not restored", len(rng), world_size
        )


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["train.lr: 0.001 -> 0.002", ...]`` for the leaves of two nested dicts that differ."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out
