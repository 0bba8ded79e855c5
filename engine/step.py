"""One optimisation step, and one training epoch made of them.

:func:`optimisation_step` is what ``train.py`` runs and ``scripts/benchmark.py`` times: forward
and loss under autocast for each micro-batch of a group, gradients summed, unscaled (fp16),
clipped, the step skipped when they are not finite. :func:`train_one_epoch` adds the epoch
around it: data, the schedule, logging, and stopping at a step boundary.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from datasets import training_inputs
from engine.amp import NonFiniteGuard, Precision, step_optimizer
from engine.checkpoint.run import RunCheckpoints
from engine.logger import RunWriter
from engine.optim import lr_label, optimizer_for, steps_per_iteration
from engine.state import TrainState
from engine.stop import StopRequest

log = logging.getLogger("train")


@dataclass
class StepResult:
    """What one step leaves for the logs; tensors stay on the device (no host sync)."""

    terms: dict[str, Tensor]  # the loss and each term, summed over the micro-batches
    grad_norm: Tensor  # before clipping; the same on every rank after DDP's all-reduce
    finite: Tensor  # whether the step was taken
    images: int


def optimisation_step(
    net: nn.Module,
    micro_batches: Iterable[tuple[Tensor, Tensor]],
    group_size: int,
    *,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    grad_clip: float,
) -> StepResult:
    """Sum the gradients of ``group_size`` micro-batches ``(images, masks)`` and take one optimizer
    step, skipped when the gradient (fp16: the loss) is not finite."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    terms: dict[str, Tensor] = {}
    group_loss = torch.zeros((), device=params[0].device)
    images = 0
    for j, (x, y) in enumerate(micro_batches):
        # DDP all-reduces gradients on every backward; only the last micro-batch needs it.
        last = j == group_size - 1
        sync = net.no_sync() if isinstance(net, DDP) and not last else contextlib.nullcontext()
        with sync:
            with precision.autocast():
                loss, parts = loss_fn(net(x), y)
            scaler.scale(loss / group_size).backward()
        if scaler.is_enabled():  # only the fp16 skip test reads it
            group_loss += loss.detach() / group_size
        for k, v in {"loss": loss, **parts}.items():
            terms[k] = terms.get(k, 0) + v.detach()
        images += x.shape[:-3].numel()  # a clip batch [B, T, 3, H, W] counts its B * T frames
    if scaler.is_enabled():
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:  # no clipping, but the norm still decides the finite check and is logged
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    finite = torch.isfinite(group_loss) if scaler.is_enabled() else torch.isfinite(grad_norm)
    step_optimizer(optimizer, scaler, finite)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(terms, grad_norm, finite, images)


def step_arguments(train_cfg, model: nn.Module, loss_fn: nn.Module, precision: Precision) -> dict:
    """Keyword arguments of :func:`optimisation_step` for a model on its own (the benchmarks): AdamW
    as train.py builds it (``train_cfg`` is ``cfg.train``), a loss scaler when the precision needs
    one, the clipping norm."""
    device = next(model.parameters()).device
    return {
        "loss_fn": loss_fn,
        "optimizer": optimizer_for(model, train_cfg, device),
        "scaler": precision.grad_scaler(),
        "precision": precision,
        "grad_clip": train_cfg.grad_clip,
    }


def _groups(batches: Iterable[dict], start: int, n: int, accum: int) -> Iterator[list[dict]]:
    """Batches ``start..n-1`` of an epoch in groups of ``accum`` counted from the epoch's first
    batch (so a resumed epoch groups as the uninterrupted one did); the last group may be shorter."""
    group: list[dict] = []
    for i, batch in enumerate(batches, start=start):
        group.append(batch)
        if (i + 1) % accum == 0 or i + 1 == n:
            yield group
            group = []


class _Log:
    """Running sums between two log steps, read with one host sync."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.micro = self.images = self.steps = 0
        self.tic = time.perf_counter()

    def add(self, r: StepResult, micro: int) -> None:
        for k, v in {**r.terms, "grad_norm": torch.where(r.finite, r.grad_norm, 0.0)}.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.micro, self.images, self.steps = self.micro + micro, self.images + r.images, self.steps + 1

    def scalars(self, world_size: int) -> dict[str, float]:
        values = dict(zip(self.sums, torch.stack([v.float() for v in self.sums.values()]).tolist()))
        out = {k: v / (self.steps if k == "grad_norm" else self.micro) for k, v in values.items()}
        out["images_per_s"] = self.images * world_size / (time.perf_counter() - self.tic)
        return out


def train_one_epoch(
    net: nn.Module,
    loader: Sequence,
    loss_fn: nn.Module,
    state: TrainState,
    *,
    precision: Precision,
    guard: NonFiniteGuard,
    writer: RunWriter,
    stop: StopRequest,
    checkpoints: RunCheckpoints | None = None,
) -> None:
    """One pass over ``loader`` from batch ``state.batch`` of epoch ``state.epoch``; advances the state.

    The host waits for the device only every ``train.log_interval`` steps, where the scalars are
    read. Ends early, at a step boundary, on ``train.max_steps`` or a stop request (``state.batch``
    then says where the epoch was left); else ``state.epoch`` advances. ``checkpoints`` saves the
    position every ``train.save_every_steps`` steps inside the epoch (every rank calls it); its end is
    saved by the caller.
    """
    t, env, optimizer = state.cfg.train, state.env, state.optimizer
    net.train()
    start = state.batch
    n = start + len(loader)  # batches in the whole epoch
    bar = writer.bar(loader, total=n, initial=start, desc=f"epoch {state.epoch + 1}/{t.epochs}")
    running = _Log()
    for group in _groups(bar, start, n, t.accum_steps):
        inputs = (training_inputs(b, env.device) for b in group)  # data.augment_on=device augments here
        result = optimisation_step(
            net,
            inputs,
            len(group),
            loss_fn=loss_fn,
            optimizer=optimizer,
            scaler=state.scaler,
            precision=precision,
            grad_clip=t.grad_clip,
        )
        if steps_per_iteration(state.scheduler):  # a plateau scheduler steps after validation instead
            state.scheduler.step()
        guard.update(result.finite)
        running.add(result, len(group))
        state.add_loss(result.terms["loss"], len(group))
        state.step, state.batch = state.step + 1, state.batch + len(group)
        logged = state.step % t.log_interval == 0 or state.batch == n
        # Under DDP the ranks agree on stopping where the host synchronises anyway (the log steps).
        stop_now = bool(t.max_steps and state.step >= t.max_steps) or (
            (logged or not env.distributed) and stop.agreed(env.device)
        )
        if logged or stop_now:
            _log_step(state, running, guard.check(), writer, bar)  # guard.check: one host sync
            running = _Log()
        if stop_now:
            break
        due = t.save_every_steps and state.step % t.save_every_steps == 0 and state.batch < n
        if checkpoints is not None and due:
            checkpoints.save_position()
    bar.close()
    # A signal at the last batch leaves batch == n: the resumed run validates this epoch.
    if state.batch == n and not stop.signum:
        state.epoch, state.batch = state.epoch + 1, 0


def _log_step(state: TrainState, running: _Log, skipped: int, writer: RunWriter, bar) -> None:
    scalars = running.scalars(state.env.world_size)
    for g in state.optimizer.param_groups:
        scalars[lr_label(g)] = g["lr"]
    scalars["skipped_steps"] = skipped
    writer.scalars("train", scalars, state.step)
    bar.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{scalars['images_per_s']:.1f}")
    shown = "  ".join(f"{k} {v:.4g}" for k, v in scalars.items())
    log.info("epoch %d step %d  %s", state.epoch + 1, state.step, shown)
