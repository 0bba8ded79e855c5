"""A run folder's checkpoints, each written by one call of :class:`RunCheckpoints`:

    last.pth   everything an exact resume needs: at the end of every epoch, every
               ``train.save_every_steps`` steps and where a stop request left the epoch
    best.pth   the weights and metrics (``BEST_KEYS``) of the epoch that improved ``train.best_metric``
    final.pth  the same after the last epoch: the weights a fixed-length recipe ends with

and which checkpoint ``train.resume`` continues from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import ConfigError
from engine.checkpoint.files import load_checkpoint, save_checkpoint
from engine.checkpoint.training import BEST_KEYS, RESUME_KEYS, restore_training, training_checkpoint
from engine.checkpoint.weights import first_nonfinite

log = logging.getLogger("train")


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


@dataclass
class Resume:
    """The checkpoint a run continues from, read before anything is built (a bad one fails first)."""

    path: Path
    ckpt: dict[str, Any]

    @property
    def config(self) -> dict | None:
        """The config it was trained with, as stored."""
        return self.ckpt.get("config")


def read_resume(resume: str, run_dir: Path) -> Resume | None:
    """The checkpoint ``train.resume`` names (None: start fresh), holding everything a resume needs."""
    path = find_resume(resume, run_dir)
    return Resume(path, load_checkpoint(path, required=RESUME_KEYS)) if path else None


class RunCheckpoints:
    """Saves a training state (an :class:`engine.state.TrainState`) into its run folder.

    Every rank calls each method (the random states of all ranks are gathered into last.pth); the
    main process alone writes. A diverged model is never saved: the run stops instead.
    """

    def __init__(self, state) -> None:
        self.state = state
        self.run_dir = Path(state.cfg.train.run_dir)
        self.last = self.run_dir / "last.pth"

    def restore(self, resume: Resume, batches_per_epoch: int) -> None:
        """Put ``resume`` back into the state (raises ``CheckpointError`` naming the file)."""
        restore_training(self.state, resume.ckpt, resume.path, batches_per_epoch)

    def best(self) -> Path | None:
        """best.pth, or None when no epoch of this run (or the one resumed) was chosen."""
        return self.run_dir / "best.pth" if self.state.best is not None else None

    def check_finite(self) -> None:
        """Raises ``FloatingPointError`` when a trainable weight is NaN/Inf (last.pth keeps the last
        finite state)."""
        bad = first_nonfinite(self.state.model.trainable_state_dict())
        if bad:
            raise FloatingPointError(
                f"weight '{bad}' is NaN/Inf after {self.state.step} steps: the run has diverged and stops here; "
                f"{self.last} keeps the last finite state. Lower train.lr"
            )

    def save_position(self) -> None:
        """last.pth with the position inside the epoch (``train.save_every_steps``)."""
        self.check_finite()
        self._save(improved=False)
        if self.state.env.is_main:
            log.info("saved last.pth at %s", self.state.position)

    def save_epoch_end(self, improved: bool) -> None:
        """At the end of an epoch's loop (also one a stop request cut short): best.pth when
        ``improved`` (:meth:`TrainState.new_best`), final.pth after the last epoch, last.pth. The
        caller has checked the weights (:meth:`check_finite`) before validating them."""
        self._save(improved)

    def _save(self, improved: bool) -> None:
        state, t = self.state, self.state.cfg.train
        checkpoint = training_checkpoint(state)  # every rank: the random states are gathered
        if not state.env.is_main:
            return
        best = {k: checkpoint[k] for k in BEST_KEYS}
        if improved:  # before last.pth: a kill in between re-runs this epoch rather than lose best.pth
            save_checkpoint(self.run_dir / "best.pth", best)
            log.info("new best %s %.4f -> %s", t.best_metric, state.best, self.run_dir / "best.pth")
        if state.epoch == t.epochs and state.batch == 0:  # the weights a fixed-length recipe ends with
            save_checkpoint(self.run_dir / "final.pth", best)
        save_checkpoint(self.last, checkpoint)
