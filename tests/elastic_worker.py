"""train.py with a worker that dies, for tests/test_elastic.py (a test hook, never used by train.py).

    KILL_RANK=1 KILL_AT_BATCH=4 torchrun ... tests/elastic_worker.py [train.py arguments]

On torchrun's first attempt (TORCHELASTIC_RESTART_COUNT=0) the process of rank $KILL_RANK sends
itself SIGKILL while it computes the loss of its $KILL_AT_BATCH-th training batch (counted from 1):
no handler runs, nothing is saved, as when a machine dies. On every later attempt, and on every
other rank, this is train.py unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import train  # noqa: E402


def dying_loss(build_loss, at: int):
    """``build_loss`` whose loss SIGKILLs this process at its ``at``-th training call."""

    def build(cfg):
        loss_fn, calls = build_loss(cfg), [0]

        def loss(outputs, mask):
            calls[0] += torch.is_grad_enabled()  # training batches only, not the validation loss
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return loss_fn(outputs, mask)

        return loss

    return build


if __name__ == "__main__":
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"
    if first_attempt and os.environ.get("RANK") == os.environ["KILL_RANK"]:
        train.build_loss = dying_loss(train.build_loss, int(os.environ["KILL_AT_BATCH"]))
    sys.exit(train.main())
