"""Mixed precision in one place: the autocast dtype, the GradScaler, and the non-finite guard."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


@dataclass(frozen=True)
class Precision:
    """Autocast settings for one device: ``dtype`` None means full float32."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def needs_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bfloat16 has float32's range."""
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """Wrap forward and loss only (never backward or the optimizer step)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is a no-op unless float16 is in use (its state dict is then empty)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def select_precision(mode: str, device: torch.device) -> Precision:
    """``mode``: "bf16" | "fp16" | "off". A GPU without bfloat16 falls back to float16 with a warning."""
    if mode not in _DTYPES:
        raise ValueError(f"train.amp='{mode}' is not one of {', '.join(_DTYPES)}")
    dtype = _DTYPES[mode]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bfloat16 support: using train.amp=fp16 (with loss scaling) instead")
        dtype = torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        log.warning("float16 autocast on CPU is slow and needs loss scaling; train.amp=bf16 is the CPU default")
    return Precision(device.type, dtype)


class NonFiniteGuard:
    """Counts optimizer steps skipped for a non-finite loss/gradient without syncing every step.

    ``update(finite)`` keeps the counters on the device; ``check()`` (called at log intervals,
    where the host syncs anyway, on every rank at the same step) raises once ``limit`` steps in a
    row were non-finite on any rank.
    """

    def __init__(self, limit: int, device: torch.device) -> None:
        self.limit = limit
        self.run = torch.zeros((), dtype=torch.int64, device=device)  # current streak
        self.longest = torch.zeros((), dtype=torch.int64, device=device)
        self.total = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, finite: torch.Tensor) -> None:
        bad = (~finite).to(torch.int64)
        self.run = (self.run + bad) * bad
        self.longest = torch.maximum(self.longest, self.run)
        self.total += bad

    def check(self) -> int:
        """Returns the number of skipped steps so far; raises after ``limit`` in a row."""
        longest = self.longest.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(longest, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        longest, total = int(longest), int(self.total)
        if longest >= self.limit:
            raise FloatingPointError(
                f"{longest} optimizer steps in a row had a non-finite loss or gradient (NaN/Inf) and were "
                f"skipped ({total} in all); the run stops here. Lower train.lr, keep train.grad_clip > 0, "
                f"try train.amp=off or bf16, or raise train.max_nonfinite"
            )
        return total


def step_optimizer(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, finite: torch.Tensor) -> None:
    """One optimizer step, skipped when ``finite`` (a 0-dim bool tensor) is False.

    With float16 the scaler already skips steps whose gradients overflowed. A fused AdamW takes
    the skip flag on the device (the ``found_inf`` protocol GradScaler itself uses), so nothing
    waits for the GPU; other optimizers read the flag on the host, which costs nothing on CPU.
    """
    if scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    elif optimizer.defaults.get("fused"):
        optimizer.found_inf = (~finite).float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf  # type: ignore[attr-defined]
    elif bool(finite):
        optimizer.step()
