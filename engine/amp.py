"""Mixed precision in one place: ``train.amp`` resolved for the device, the autocast dtype, the
GradScaler, and the non-finite guard.

``train.amp=auto`` (the default) is resolved once at start-up by :func:`resolve_precision`: on CUDA
bf16 where the GPU supports it, else fp16 with loss scaling; on CPU bf16 only where a short matmul
probe shows bf16 clearly faster than float32 (CPUs with AMX), else float32. Explicit values are
kept as given and skip the probe.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from config import Amp, ConfigError, resolved_amp

log = logging.getLogger(__name__)

_DTYPES = {Amp.bf16: torch.bfloat16, Amp.fp16: torch.float16, Amp.off: None}
_SAYS = {
    Amp.bf16: "bf16 (bfloat16 autocast)",
    Amp.fp16: "fp16 (float16 autocast, loss scaling)",
    Amp.off: "off (float32)",
}

# The CPU probe: a square matmul about as wide as a ViT-B layer, best of a few runs per dtype.
_PROBE_N, _PROBE_RUNS, _PROBE_BUDGET_S = 768, 3, 0.5
# bf16 must beat float32 by this factor: float32 is exact, so it wins a near-tie (probe noise).
_BF16_MARGIN = 1.1


@dataclass(frozen=True)
class Precision:
    """Autocast settings for one device. ``amp`` is resolved: bf16, fp16 or off (float32)."""

    device_type: str
    amp: Amp
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None means full float32."""
        return _DTYPES[self.amp]

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


def cpu_matmul_rates(n: int = _PROBE_N, runs: int = _PROBE_RUNS, budget_s: float = _PROBE_BUDGET_S) -> dict:
    """FLOP/s of an n x n matmul on this CPU, ``{"bf16": .., "fp32": ..}``: the best of ``runs``
    after one warm-up, with the threads torch uses now; stops early once ``budget_s`` is spent."""
    rates = {}
    deadline = time.perf_counter() + budget_s / 2
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.full((n, n), 0.5, dtype=dtype)  # no random numbers: the caller's seeded streams stay as they are
        a @ a
        best = 0.0
        for _ in range(runs):
            t = time.perf_counter()
            a @ a
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
            if time.perf_counter() > deadline:
                break
        rates[name] = best
        deadline += budget_s / 2
    return rates


def resolve_amp(amp: Amp, device: torch.device) -> tuple[Amp, str]:
    """``train.amp`` for ``device`` -> (bf16 | fp16 | off, why). Only ``auto`` is decided here; an
    explicit value is returned as given, without probing, unless the device cannot run it."""
    amp = Amp(amp)
    cuda = device.type == "cuda"
    if amp != Amp.auto:
        if cuda and amp == Amp.bf16 and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"config key 'train.amp': {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                "use train.amp=fp16 or auto"
            )
        if device.type == "cpu" and amp == Amp.fp16:
            log.warning("float16 autocast on CPU is slow and needs loss scaling; train.amp=auto picks for this CPU")
        return amp, "as configured"
    if cuda:
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return Amp.bf16, f"{name} supports bfloat16"
        return Amp.fp16, f"{name} has no bfloat16"
    if device.type == "cpu":
        r = cpu_matmul_rates()
        why = f"bf16 matmul {r['bf16'] / 1e9:.0f} GFLOP/s vs float32 {r['fp32'] / 1e9:.0f} on this CPU"
        return (Amp.bf16 if r["bf16"] > _BF16_MARGIN * r["fp32"] else Amp.off), why
    return Amp.off, f"no mixed-precision rule for {device.type} devices"


def resolve_precision(cfg, device: torch.device, resumed: dict | None = None) -> Precision:
    """Resolve ``cfg.train.amp`` for ``device`` once, in place (the saved config and checkpoints
    then record the choice), log it with the reason, and return the :class:`Precision`.

    ``resumed``: the config stored in a checkpoint being continued; with ``train.amp=auto`` the
    run keeps the precision it started with. Under DDP rank 0 decides for every rank.
    """
    asked = Amp(cfg.train.amp)
    train = resumed.get("train") if isinstance(resumed, dict) else None
    stored = train.get("amp") if isinstance(train, dict) else None
    ddp = dist.is_available() and dist.is_initialized()
    choice: list = [None]
    if not ddp or dist.get_rank() == 0:
        try:
            if asked == Amp.auto and stored in (Amp.bf16, Amp.fp16, Amp.off):
                choice = [(resolve_amp(stored, device)[0], "kept from the checkpoint being resumed")]
            else:
                choice = [resolve_amp(asked, device)]
        except ConfigError as err:
            choice = [err]  # every rank raises it, none waits for the broadcast
    if ddp:
        dist.broadcast_object_list(choice, src=0)
    if isinstance(choice[0], ConfigError):
        raise choice[0]
    amp, reason = choice[0]
    cfg.train.amp = amp
    log.info("amp=%s%s: %s", "auto -> " if asked == Amp.auto else "", _SAYS[amp], reason)
    return Precision(device.type, amp, reason)


def select_precision(amp: Amp, device: torch.device) -> Precision:
    """The :class:`Precision` of an already resolved ``amp`` (bf16, fp16 or off)."""
    return Precision(device.type, resolved_amp(amp))


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
        both = torch.stack([self.longest, self.total])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(both, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        longest, total = both.tolist()  # one host sync for both counters
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
