"""Stopping at a safe point: SIGINT (Ctrl-C), SIGTERM and SIGUSR1 (what schedulers send before
preempting a job) ask the training loop to stop at the next optimizer-step boundary, where
train.py saves ``last.pth`` with the position inside the epoch and exits: 0 after SIGTERM/SIGUSR1
(an orderly stop; the scheduler requeues the job), 130 after Ctrl-C.

A second Ctrl-C quits at once (KeyboardInterrupt); ``last.pth`` then stays the previous one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Context manager that installs the handlers (main thread only) and restores the old ones.

    ``signum`` is the signal received (None: keep going). Under DDP a signal may reach the ranks at
    different steps, so :meth:`agreed` takes the decision together (an all-reduce); train.py asks at
    the steps where the host synchronises anyway.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.pid = os.getpid()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        self.pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:
            return  # a forked DataLoader worker: the main process stops it when it stops
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: the user wants out now
        self.signum = signum
        log.info(
            "%s received: stopping after the current step and saving last.pth (Ctrl-C again quits at once)",
            signal.Signals(signum).name,
        )

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def agreed(self, device: torch.device) -> bool:
        """True on every rank when any rank was signalled (a collective under DDP)."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.signum is not None
        flag = torch.tensor([self.signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if self.signum is None and int(flag):
            self.signum = int(flag)
        return self.signum is not None
