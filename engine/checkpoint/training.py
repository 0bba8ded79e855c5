"""The training checkpoint: what last.pth, best.pth and final.pth hold, and putting it back into a
freshly built training state for an exact resume.

Only the trainable weights are stored (``E2Net.trainable_state_dict()``); the frozen DINOv3 is read
again from ``model.encoder.pretrained_path``, which the stored config names, and a fingerprint of
it (:func:`encoder_fingerprint`) tells when another encoder sits there now.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from config import first_line, to_dict
from engine.checkpoint.files import CheckpointError, library_versions
from engine.checkpoint.weights import check_fingerprint, load_weights
from engine.distributed import all_gather_objects
from engine.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)

# What train.py needs from a checkpoint to continue (best.pth holds only the weights and metrics).
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step")
BEST_KEYS = ("model", "config", "encoder", "epoch", "step", "best", "metrics", "versions")
# More optimizer steps than this is not a run of this framework (a corrupt or hand-edited file).
MAX_STEPS = 2**31


def training_checkpoint(state) -> dict[str, Any]:
    """Everything an exact resume of ``state`` (an :class:`engine.state.TrainState`) needs: what last.pth
    holds. Collective under DDP (every rank's generator states are gathered): call it on every rank."""
    return {
        "model": state.model.trainable_state_dict(),
        **{name: part.state_dict() for name, part in state.parts.items()},
        "epoch": state.epoch,
        "batch": state.batch,
        "step": state.step,
        "best": state.best,
        "metrics": state.metrics,
        "rng": all_gather_objects(rng_state()),
        "epoch_loss": all_gather_objects(state.loss_so_far()),
        "config": to_dict(state.cfg),
        "encoder": state.encoder,
        "versions": library_versions(),
    }


def restore_training(state, ckpt: Mapping[str, Any], path: Path, batches_per_epoch: int) -> None:
    """Put a :func:`training_checkpoint` back into the freshly built ``state``; anything that does not fit
    (another model or config, a malformed entry, counters out of range) raises
    :class:`CheckpointError` naming the file."""
    old_cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    epochs = old_cfg.get("train", {}).get("epochs") if isinstance(old_cfg.get("train"), dict) else None
    epochs = epochs if isinstance(epochs, int) else state.cfg.train.epochs
    state.epoch, state.batch, state.step = _counters(ckpt, path, batches_per_epoch, epochs)
    best = ckpt.get("best")
    if best is not None and not (isinstance(best, (int, float)) and math.isfinite(best)):
        raise CheckpointError(f"checkpoint '{path}': entry 'best' is {best!r}, not a finite number or None")
    state.best, state.metrics = best, ckpt.get("metrics")
    changed = changed_keys(old_cfg, to_dict(state.cfg))
    if changed:
        log.warning("resuming with config keys that differ from the checkpoint's: %s", ", ".join(changed))
    check_fingerprint(ckpt, path, state.encoder)
    load_weights(state.model, ckpt["model"], path)
    configured = [dict(g) for g in state.optimizer.param_groups]  # the hyperparameters of this config
    for name, part in state.parts.items():
        fresh = part.state_dict()
        if not fresh:
            continue  # disabled in this run (e.g. the loss scaler without float16)
        if name not in ckpt or ckpt[name] == {}:  # e.g. a scaler the saving run did not use
            log.warning("checkpoint '%s' has no '%s' state: it starts fresh", path, name)
            continue
        try:
            _check_like(ckpt[name], fresh)
            part.load_state_dict(ckpt[name])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
            key = state.cfg.train.get(name)  # e.g. train.scheduler names the kind of scheduler
            setting = f", this config has train.{name}={key}" if key is not None else ""
            raise CheckpointError(
                f"checkpoint '{path}': its '{name}' entry does not fit this model/config "
                f"({first_line(err, with_type=True)}{setting}); "
                f"resume with the config it was trained with (config.yaml beside it) or start fresh with "
                f"train.resume="
            ) from None
    rebase_hyperparameters(state.optimizer, configured, state.parts.values())
    restore_epoch_loss(state, ckpt.get("epoch_loss"), path)
    rng = ckpt.get("rng") or []
    if not isinstance(rng, list) or len(rng) != state.env.world_size:
        n = len(rng) if isinstance(rng, list) else "no"
        log.warning(
            "checkpoint has random states for %s process(es), this run has %d: not restored", n, state.env.world_size
        )
        return
    try:
        set_rng_state(rng[state.env.rank])
    except (TypeError, KeyError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        reason = first_line(err, with_type=True)
        raise CheckpointError(f"checkpoint '{path}': its 'rng' entry is malformed ({reason})") from None


def restore_epoch_loss(state, saved: Any, path: Path) -> None:
    """This process's loss sums of the epoch the checkpoint stopped inside (none at a boundary);
    not restored (with a warning) when another number of processes saved them."""
    state.loss_sum, state.loss_count = None, 0
    if saved is None:  # written before these sums were kept
        return
    if not isinstance(saved, list) or not all(isinstance(e, (list, tuple)) and len(e) == 2 for e in saved):
        raise CheckpointError(
            f"checkpoint '{path}': its 'epoch_loss' entry is malformed (not [sum, count] per process)"
        )
    if len(saved) != state.env.world_size:
        log.warning("checkpoint has epoch loss sums for %d process(es), this run has %d: the epoch's training "
                    "loss restarts from here", len(saved), state.env.world_size)  # fmt: skip
        return
    total, count = saved[state.env.rank]
    # The sum may be NaN (a step whose loss was not finite); the count is whole micro-batches.
    if not isinstance(total, float) or isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise CheckpointError(
            f"checkpoint '{path}': its 'epoch_loss' entry {saved[state.env.rank]!r} is not a sum and a count"
        )
    if count:
        state.loss_sum = torch.tensor(total, device=state.env.device)
        state.loss_count = count


def _check_like(saved: Any, fresh: dict) -> None:
    """A saved state must have the shape of a fresh one: a dict with the same keys, each value of
    the same kind (torch's loaders accept nearly anything and fail steps later)."""
    if not isinstance(saved, dict):
        raise TypeError(f"a {type(saved).__name__}, not a state dict")
    if set(saved) != set(fresh):  # e.g. a cosine schedule's state for a plateau run (train.scheduler)
        raise ValueError(
            f"another kind of object saved it (keys {', '.join(sorted(map(str, saved)))}; "
            f"this config's has {', '.join(sorted(map(str, fresh)))})"
        )
    for k, v in fresh.items():
        kinds = [(bool,), (int, float), (list, tuple), (dict,), (torch.Tensor,), (str,)]
        kind = next((c for c in kinds if isinstance(v, c)), None)
        if kind and v is not None and saved[k] is not None and not isinstance(saved[k], kind):
            raise TypeError(f"'{k}' is a {type(saved[k]).__name__}, expected a {type(v).__name__}")


def _counters(ckpt: Mapping[str, Any], path: Path, batches_per_epoch: int, epochs: int) -> tuple[int, int, int]:
    """``epoch``, ``batch``, ``step`` of a checkpoint, each within what the run that wrote it
    (``epochs`` of its config) and this run's data (``batches_per_epoch``) allow."""
    limits = {"epoch": epochs, "batch": batches_per_epoch, "step": MAX_STEPS}
    values = {k: ckpt.get(k, 0) for k in limits}
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limits[k]:
            hint = (
                "the training data or train.batch_size changed since; resume with the ones it was trained with"
                if k == "batch" and isinstance(v, int) and v > 0
                else "the file is damaged or was not written by train.py"
            )
            raise CheckpointError(
                f"checkpoint '{path}': entry '{k}' is {v!r}, outside [0, {limits[k]}] ({hint}); "
                f"or start fresh with train.resume="
            )
    return values["epoch"], values["batch"], values["step"]


def rebase_hyperparameters(optimizer: torch.optim.Optimizer, configured: list[dict], parts) -> None:
    """After loading, the optimizer holds the checkpoint's learning rates and weight decay: apply this
    config's instead, so a changed ``train.lr`` / ``weight_decay`` / ``encoder_lr_scale`` takes effect.

    The schedule continues at the same point, scaled to the new base rate (a scheduler's ``base_lrs``
    are re-based; a running rate, e.g. one a plateau scheduler lowered, is scaled by new / old).
    """
    ratios = []
    for group, new in zip(optimizer.param_groups, configured):
        old_base = group.get("initial_lr", group["lr"])
        new_base = new.get("initial_lr", new["lr"])
        ratios.append(new_base / old_base if old_base > 0 else 1.0)
        if old_base != new_base:
            group["lr"] = group["lr"] * ratios[-1] if old_base > 0 else new_base
            log.info("group %s: base learning rate %.4g -> %.4g", group.get("name", "?"), old_base, new_base)
        for key in ("initial_lr", "weight_decay", "betas"):
            if key in new:
                group[key] = new[key]
    for part in parts:
        if hasattr(part, "base_lrs"):
            part.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        if isinstance(getattr(part, "min_lrs", None), list):  # a plateau scheduler's floors
            part.min_lrs = [m * r for m, r in zip(part.min_lrs, ratios)]


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``["train.lr: 0.001 -> 0.002", ...]`` for the leaves of two nested dicts that differ."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out
