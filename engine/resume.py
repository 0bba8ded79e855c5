"""Training state as one object: what a checkpoint holds, and putting it back for an exact resume.

Only the trainable weights are stored (``E2Net.trainable_state_dict()``); the frozen DINOv3 is read
again from ``model.encoder.pretrained_path``, which the stored config names, and a fingerprint of
it (:func:`encoder_fingerprint`) tells when another encoder sits there now.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from config import ConfigError, to_dict
from engine.checkpoint import CheckpointError, first_line, library_versions
from engine.distributed import DistEnv, all_gather_objects
from engine.rng import rng_state, set_rng_state
from engine.weights import check_fingerprint, encoder_fingerprint, load_weights

log = logging.getLogger(__name__)

# What train.py needs from a checkpoint to continue (best.pth holds only the weights and metrics).
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step")
BEST_KEYS = ("model", "config", "encoder", "epoch", "step", "best", "metrics", "versions")
# More optimizer steps than this is not a run of this framework (a corrupt or hand-edited file).
MAX_STEPS = 2**31


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


@dataclass
class TrainState:
    """Everything an exact resume needs, saved and restored as one ``state_dict()``.

    ``model`` is the unwrapped model (its trainable weights are saved); ``optimizer``, ``scheduler``,
    ``scaler`` and every entry of ``extra`` are anything with ``state_dict()`` / ``load_state_dict()``,
    saved under their own names; ``env`` says which process this is. Position: ``epoch`` epochs
    are complete and ``batch`` batches of the next one are done (0 at an epoch boundary); ``step``
    optimizer steps in all. ``loss_sum`` / ``loss_count``: this process's training loss summed over
    the micro-batches done in the current epoch, and their count (``train.best_metric=train_loss``
    picks best.pth on the epoch's mean, :meth:`epoch_loss`).
    """

    cfg: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Stateful
    scaler: torch.amp.GradScaler
    env: DistEnv = field(default_factory=lambda: DistEnv(0, 1, 0, torch.device("cpu"), True))
    extra: dict[str, Stateful] = field(default_factory=dict)
    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float | None = None
    metrics: dict | None = None
    loss_sum: torch.Tensor | None = None
    loss_count: int = 0
    _encoder: dict | None = field(default=None, init=False, repr=False)

    @property
    def encoder(self) -> dict:
        """The frozen encoder's fingerprint, computed once (its weights never change)."""
        if self._encoder is None:
            self._encoder = encoder_fingerprint(self.model, self.cfg)
        return self._encoder

    @property
    def position(self) -> str:
        return f"epoch {self.epoch} + {self.batch} batches (step {self.step})"

    def add_loss(self, loss_sum: torch.Tensor, micro_batches: int) -> None:
        """Count one step's loss (summed over its micro-batches) into the epoch's; no host sync."""
        loss_sum = loss_sum.detach().float()
        self.loss_sum = loss_sum if self.loss_sum is None else self.loss_sum + loss_sum
        self.loss_count += micro_batches

    def _loss_so_far(self) -> tuple[float, int]:
        return (float(self.loss_sum) if self.loss_sum is not None else 0.0), self.loss_count

    def epoch_loss(self) -> float:
        """The finished epoch's mean training loss over every process's micro-batches (NaN when a
        step's loss was not finite); resets the sums. Collective under DDP: call it on every rank."""
        parts = all_gather_objects(self._loss_so_far())
        self.loss_sum, self.loss_count = None, 0
        count = sum(n for _, n in parts)
        return sum(s for s, _ in parts) / count if count else math.nan

    @property
    def parts(self) -> dict[str, Stateful]:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler, **self.extra}

    def state_dict(self) -> dict[str, Any]:
        """Collective under DDP (every rank's generator states are gathered): call it on every rank."""
        return {
            "model": self.model.trainable_state_dict(),
            **{name: part.state_dict() for name, part in self.parts.items()},
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "best": self.best,
            "metrics": self.metrics,
            "rng": all_gather_objects(rng_state()),
            "epoch_loss": all_gather_objects(self._loss_so_far()),
            "config": to_dict(self.cfg),
            "encoder": self.encoder,
            "versions": library_versions(),
        }

    def load_state_dict(self, ckpt: Mapping[str, Any], path: Path, batches_per_epoch: int) -> None:
        """Put a :meth:`state_dict` back into freshly built objects; anything that does not fit
        (another model or config, a malformed entry, counters out of range) raises
        :class:`CheckpointError` naming the file."""
        old_cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        epochs = old_cfg.get("train", {}).get("epochs") if isinstance(old_cfg.get("train"), dict) else None
        epochs = epochs if isinstance(epochs, int) else self.cfg.train.epochs
        self.epoch, self.batch, self.step = _counters(ckpt, path, batches_per_epoch, epochs)
        best = ckpt.get("best")
        if best is not None and not (isinstance(best, (int, float)) and math.isfinite(best)):
            raise CheckpointError(f"checkpoint '{path}': entry 'best' is {best!r}, not a finite number or None")
        self.best, self.metrics = best, ckpt.get("metrics")
        changed = changed_keys(old_cfg, to_dict(self.cfg))
        if changed:
            log.warning("resuming with config keys that differ from the checkpoint's: %s", ", ".join(changed))
        check_fingerprint(ckpt, path, self.encoder)
        load_weights(self.model, ckpt["model"], path)
        configured = [dict(g) for g in self.optimizer.param_groups]  # the hyperparameters of this config
        for name, part in self.parts.items():
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
                key = self.cfg.train.get(name)  # e.g. train.scheduler names the kind of scheduler
                setting = f", this config has train.{name}={key}" if key is not None else ""
                raise CheckpointError(
                    f"checkpoint '{path}': its '{name}' entry does not fit this model/config "
                    f"({first_line(err)}{setting}); "
                    f"resume with the config it was trained with (config.yaml beside it) or start fresh with "
                    f"train.resume="
                ) from None
        rebase_hyperparameters(self.optimizer, configured, self.parts.values())
        self._load_epoch_loss(ckpt.get("epoch_loss"), path)
        rng = ckpt.get("rng") or []
        if not isinstance(rng, list) or len(rng) != self.env.world_size:
            n = len(rng) if isinstance(rng, list) else "no"
            log.warning(
                "checkpoint has random states for %s process(es), this run has %d: not restored", n, self.env.world_size
            )
            return
        try:
            set_rng_state(rng[self.env.rank])
        except (TypeError, KeyError, ValueError, RuntimeError, AttributeError, IndexError) as err:
            raise CheckpointError(f"checkpoint '{path}': its 'rng' entry is malformed ({first_line(err)})") from None

    def _load_epoch_loss(self, saved: Any, path: Path) -> None:
        """This process's loss sums of the epoch the checkpoint stopped inside (none at a boundary);
        not restored (with a warning) when another number of processes saved them."""
        self.loss_sum, self.loss_count = None, 0
        if saved is None:  # written before these sums were kept
            return
        if not isinstance(saved, list) or not all(isinstance(e, (list, tuple)) and len(e) == 2 for e in saved):
            raise CheckpointError(
                f"checkpoint '{path}': its 'epoch_loss' entry is malformed (not [sum, count] per process)"
            )
        if len(saved) != self.env.world_size:
            log.warning("checkpoint has epoch loss sums for %d process(es), this run has %d: the epoch's training "
                        "loss restarts from here", len(saved), self.env.world_size)  # fmt: skip
            return
        total, count = saved[self.env.rank]
        # The sum may be NaN (a step whose loss was not finite); the count is whole micro-batches.
        if not isinstance(total, float) or isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise CheckpointError(
                f"checkpoint '{path}': its 'epoch_loss' entry {saved[self.env.rank]!r} is not a sum and a count"
            )
        if count:
            self.loss_sum = torch.tensor(total, device=self.env.device)
            self.loss_count = count


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


def find_resume(resume: str, run_dir: Path) -> Path | None:
    """``train.resume``: "auto" -> <run>/last.pth if present; "" -> start fresh; else a path that must exist.

    Anything at the path that is not a regular file (a folder, a broken link) is an error: starting
    fresh would overwrite the run's checkpoints.
    """
    path = run_dir / "last.pth" if resume == "auto" else Path(resume) if resume else None
    if path is None or (resume == "auto" and not path.is_symlink() and not path.exists()):
        return None
    if not path.is_symlink() and not path.exists():
        raise ConfigError(
            f"config key 'train.resume': checkpoint '{resume}' not found "
            f"(give an existing .pth, 'auto', or '' to start fresh)"
        )
    if not path.is_file():
        what = "a folder" if path.is_dir() else "a broken link" if path.is_symlink() else "not a regular file"
        raise ConfigError(
            f"config key 'train.resume': checkpoint '{path}' is {what}; give an existing .pth file, remove "
            f"or rename what is there, or set train.resume='' with another train.run_dir to start fresh"
        )
    return path


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
