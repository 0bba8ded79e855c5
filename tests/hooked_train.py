"""train.py with test hooks, for the tests of torchrun's restarts and signals (never used by train.py).

    KILL_RANK=1 KILL_AT_BATCH=4 torchrun ... tests/hooked_train.py [train.py arguments]
    SIGNAL_LAUNCHER_AT_BATCH=2 torchrun ... tests/hooked_train.py [train.py arguments]

On torchrun's first attempt only (TORCHELASTIC_RESTART_COUNT=0), while computing the loss of its
N-th training batch (counted from 1):
  KILL_AT_BATCH=N             the process of rank $KILL_RANK sends itself SIGKILL: no handler
                              runs, nothing is saved, as when a machine dies;
  SIGNAL_LAUNCHER_AT_BATCH=N  rank 0 sends SIGUSR1 to torchrun, its parent, as SLURM's srun does
                              before a time limit.
Otherwise this is train.py unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import train  # noqa: E402


def at_batch(build_loss, n: int, action: Callable[[], None]):
    """``build_loss`` whose loss runs ``action`` at its ``n``-th training call."""

    def build(cfg):
        loss_fn, calls = build_loss(cfg), [0]

        def loss(outputs, mask):
            calls[0] += torch.is_grad_enabled()  # training batches only, not the validation loss
            if calls[0] == n and torch.is_grad_enabled():
                action()
            return loss_fn(outputs, mask)

        return loss

    return build


if __name__ == "__main__":
    if os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
        rank = os.environ.get("RANK")
        if "KILL_AT_BATCH" in os.environ and rank == os.environ["KILL_RANK"]:
            kill = partial(os.kill, os.getpid(), signal.SIGKILL)
            train.build_loss = at_batch(train.build_loss, int(os.environ["KILL_AT_BATCH"]), kill)
        if "SIGNAL_LAUNCHER_AT_BATCH" in os.environ and rank == "0":
            usr1 = partial(os.kill, os.getppid(), signal.SIGUSR1)
            train.build_loss = at_batch(train.build_loss, int(os.environ["SIGNAL_LAUNCHER_AT_BATCH"]), usr1)
    sys.exit(train.main())
