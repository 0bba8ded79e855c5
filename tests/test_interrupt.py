"""Stopping and sharing a run: SIGTERM / SIGUSR1 / Ctrl-C stop at a step boundary with the position
inside the epoch saved, the resumed run ends bit-identical to one never stopped, and a run folder
has one writer at a time (a live second writer is refused, a dead one's lock is taken over)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
import torch

import build
import train
from engine.checkpoint import load_checkpoint
from engine.stop import SIGNALS, StopRequest
from helpers import ROOT, run_train, same_training

BATCHES = 2  # per epoch of the shared tiny run: 8 training images at batch 4


@pytest.fixture
def args(tiny_run) -> list[str]:
    return tiny_run.args


@pytest.fixture
def straight(tiny_run) -> dict:
    """The last checkpoint of the shared run, never stopped."""
    return load_checkpoint(tiny_run.straight / "last.pth")


def _signal_during_batches(monkeypatch, signum: int, *batches: int) -> None:
    """Deliver a real ``signum`` to this process while the training loss of these batches (counted
    from 1 over the run; a batch given twice gets it twice) is computed; train.py's handler receives
    it like one from `kill`."""

    def signalling_loss(cfg):
        loss_fn, seen = build.build_loss(cfg), [0]

        def loss(outputs, mask):
            seen[0] += torch.is_grad_enabled()  # training batches only, not the validation loss
            for _ in range(batches.count(seen[0]) if torch.is_grad_enabled() else 0):
                # without train.py's handler the signal would end pytest itself, naming no test
                assert signal.getsignal(signum) is not signal.SIG_DFL, f"no handler for {signal.Signals(signum).name}"
                signal.raise_signal(signum)
            return loss_fn(outputs, mask)

        return loss

    monkeypatch.setattr(train, "build_loss", signalling_loss)


def test_each_stop_signal_reaches_the_handler_and_the_old_handlers_come_back():
    before = {s: signal.getsignal(s) for s in SIGNALS}
    with StopRequest() as stop:
        for s in SIGNALS:
            # checked before raising: a signal left at its default would end pytest itself
            assert getattr(signal.getsignal(s), "__self__", None) is stop, f"no handler for {signal.Signals(s).name}"
            stop.signum = None
            signal.raise_signal(s)
            assert stop.signum == s and stop.name == signal.Signals(s).name
    assert {s: signal.getsignal(s) for s in SIGNALS} == before


@pytest.mark.parametrize(
    "signum, batch, position",
    [
        (signal.SIGTERM, 3, (1, 1, 3)),  # mid-epoch: epoch 1 done, 1 batch of epoch 2
        (signal.SIGUSR1, 2, (0, BATCHES, 2)),  # at the last batch of epoch 1: validated after the resume
    ],
)
def test_stop_signal_then_resume_is_bit_identical(
    tmp_path, monkeypatch, capsys, args, straight, signum, batch, position
):
    run = tmp_path / "run"
    _signal_during_batches(monkeypatch, signum, batch)
    assert run_train([*args, f"train.run_dir={run}"]) == 0  # an orderly stop
    stopped = load_checkpoint(run / "last.pth")
    assert (stopped["epoch"], stopped["batch"], stopped["step"]) == position
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"stopped by {signal.Signals(signum).name}" in err
    assert f"stopped by {signal.Signals(signum).name}" in (run / "train.log").read_text()

    monkeypatch.undo()
    assert run_train([*args, f"train.run_dir={run}", "train.resume=auto"]) == 0
    same_training(straight, load_checkpoint(run / "last.pth"))
    assert not (run / "train.lock").exists()


def test_ctrl_c_stops_at_a_safe_point_and_twice_at_once(tmp_path, monkeypatch, capsys, args):
    run = tmp_path / "run"
    _signal_during_batches(monkeypatch, signal.SIGINT, 1)
    assert run_train([*args, f"train.run_dir={run}"]) == 130
    last = load_checkpoint(run / "last.pth")
    assert (last["epoch"], last["batch"], last["step"]) == (0, 1, 1)
    lines = [x for x in capsys.readouterr().err.splitlines() if " WARNING " in x or " ERROR " in x]
    assert (
        len(lines) == 1
        and "stopped by SIGINT" in lines[0]
        and "last.pth holds epoch 0 + 1 batches (step 1)" in lines[0]
    )

    again = tmp_path / "again"
    _signal_during_batches(monkeypatch, signal.SIGINT, 1, 1)  # the second Ctrl-C quits at once
    assert run_train([*args, f"train.run_dir={again}"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted by a second Ctrl-C" in err
    assert not (again / "last.pth").exists() and not (again / "train.lock").exists()


LOCK_HOLDER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from engine.run_folder import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_live_writer_is_refused_a_dead_ones_lock_is_taken_over(tmp_path, capsys, args):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(run), str(ROOT)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert run_train([*args, f"train.run_dir={run}"]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and "in use by another train.py" in err
        assert f"PID {holder.pid} on host {socket.gethostname()}" in err
        assert {p.name for p in run.iterdir()} == {"train.lock"}  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing (SIGKILL): its lock is stale and taken over with a warning.
    assert run_train([*args, f"train.run_dir={run}", "data.root=/nonexistent"]) == 1
    text = (run / "train.log").read_text()
    assert f"took over the lock of PID {holder.pid}" in text
    assert not (run / "train.lock").exists()  # released when the run ended
