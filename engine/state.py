"""Training state as one object: the model, optimizer, scheduler and scaler being trained, where
in the run they are, the best ``train.best_metric`` so far and the running epoch loss.

What a checkpoint holds of it and putting that back for an exact resume: :mod:`engine.checkpoint`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from engine.checkpoint import encoder_fingerprint
from engine.distributed import DistEnv, all_gather_objects
from evaluation.names import LOWER_IS_BETTER


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


@dataclass
class TrainState:
    """Everything an exact resume needs (:func:`engine.checkpoint.training.training_checkpoint` saves it).

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

    def new_best(self, metrics: Mapping[str, float]) -> bool:
        """Whether ``metrics`` (an epoch's validation scores, or its ``train_loss``) beat ``best`` in
        ``train.best_metric`` (lower for MAE and the losses, higher for the rest); if so that value
        becomes ``best``. A missing or non-finite value never does. The one place best.pth is chosen."""
        metric = self.cfg.train.best_metric
        value = metrics.get(metric)
        if value is None or not math.isfinite(value):
            return False
        if self.best is not None and (value >= self.best if metric in LOWER_IS_BETTER else value <= self.best):
            return False
        self.best = value
        return True

    def loss_so_far(self) -> tuple[float, int]:
        """This process's loss sum and micro-batch count of the epoch so far (a host sync)."""
        return (float(self.loss_sum) if self.loss_sum is not None else 0.0), self.loss_count

    def epoch_loss(self) -> float:
        """The finished epoch's mean training loss over every process's micro-batches (NaN when a
        step's loss was not finite); resets the sums. Collective under DDP: call it on every rank."""
        parts = all_gather_objects(self.loss_so_far())
        self.loss_sum, self.loss_count = None, 0
        count = sum(n for _, n in parts)
        return sum(s for s, _ in parts) / count if count else math.nan

    @property
    def parts(self) -> dict[str, Stateful]:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler, **self.extra}
