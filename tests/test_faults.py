"""Faults: SIGKILL at random moments (mid-checkpoint-write included), dead or hung DDP workers.
Every run here is a real train.py run of a tiny model (disk faults: test_disk_faults.py), launched
as a step of the session's background launches (tests/conftest.py) and checked here."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.checkpoint.training import RESUME_KEYS
from helpers import ROOT, torchrun
from kill_resume import checked_state, temps

EPOCHS, STEPS_PER_EPOCH = 6, 2  # 8 training images at batch 4
# Seeds the SIGKILL test's random delays; a failure names its seed: E2NET_FAULTS_SEED=<seed> replays the delays.
SEED = int(os.environ.get("E2NET_FAULTS_SEED", "0"))
WAITING_STEPS = ("sigkill", "survivor_dies", "survivor_hangs")  # mostly pauses, delays and timeouts


# --------------------------------------------------------------------------- SIGKILL
def background_steps(request, folder: Path, tests: set[str]) -> dict[str, str]:
    """tests/kill_resume.py on the shared run, and the signals to one DDP rank, in the session's
    background launches: most of their time is spent waiting for the moments they strike at."""
    steps = _ddp_fault_steps(request, folder, tests) | _survivor_steps(folder, tests)
    if "test_sigkill_at_random_moments_then_resume" not in tests:
        return steps
    run_args = [*request.getfixturevalue("tiny_run").args, f"train.epochs={EPOCHS}"]
    return {
        **steps,
        "sigkill": shlex.join([sys.executable, "tests/kill_resume.py", str(folder / "sigkill"), str(SEED), *run_args]),
    }


def test_sigkill_at_random_moments_then_resume(background):
    """Kill a training run 4 times (once mid-write of a checkpoint, once while it starts), resume each
    time with train.resume=auto, and end with exactly the weights of a run that was never interrupted
    (tests/kill_resume.py does the killing and checks each kill)."""
    print(f"random delays from seed {SEED}: replay with E2NET_FAULTS_SEED={SEED}")  # shown if the test fails
    (code,), printed = background.result("sigkill")
    assert code == 0, printed[-4000:]
    out = background.folder / "sigkill"
    where = json.loads((out / "report.json").read_text())["where"]
    straight, run = out / "straight", out / "killed"
    assert checked_state(run) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH), where
    assert not temps(run), where  # the next save cleaned up what the killed writer left
    log_text = (run / "train.log").read_text()
    assert log_text.count("resumed from") >= 2, where
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(run / "last.pth")
    for k in a["model"]:  # the interruptions changed nothing: no step lost, none done twice
        assert torch.equal(a["model"][k], b["model"][k]), (k, where)
    assert a["best"] == b["best"], where


# --------------------------------------------------------------------------- DDP
def _ddp_fault_steps(request, folder: Path, tests: set[str]) -> dict[str, str]:
    """Two-process torchrun trainings that get a signal to rank 1 after three steps
    (tests/signal_a_rank.py), in the session's background launches."""
    run_args = [*request.getfixturevalue("tiny_run").args, "train.epochs=200", "train.batch_size=2"]
    steps = {}
    for sig, test in (("KILL", "test_dead_ddp_worker_stops_the_whole_run"),
                      ("TERM", "test_sigterm_to_one_ddp_rank_stops_every_rank_at_the_same_step")):  # fmt: skip
        if test in tests:
            out = folder / f"ddp_sig{sig.lower()}"
            cmd = [*torchrun(2), str(ROOT / "train.py"), *run_args, f"train.run_dir={out / 'run'}"]
            script = [sys.executable, "tests/signal_a_rank.py", sig, str(out / "run"), str(out / "report.json")]
            steps[f"ddp_sig{sig.lower()}"] = f"mkdir -p {shlex.quote(str(out))}; " + shlex.join([*script, "--", *cmd])
    return steps


def _signalled(background, sig: str) -> tuple[dict, str, Path]:
    (code,), printed = background.result(f"ddp_sig{sig}")
    assert code == 0, printed[-3000:]
    out = background.folder / f"ddp_sig{sig}"
    return json.loads((out / "report.json").read_text()), printed, out / "run"


def test_dead_ddp_worker_stops_the_whole_run(background):
    """torchrun, 2 CPU processes (gloo): SIGKILL rank 1 mid-training; rank 0 must not wait for it."""
    report, printed, run = _signalled(background, "kill")
    assert len(report["workers"]) == 2, report
    assert report["rc"] != 0 and report["took"] < 30, report
    assert not report["alive"], report  # no orphan left behind
    assert "exitcode  : -9" in printed  # torchrun names the dead rank
    checked_state(run)  # whatever was saved still loads


def test_sigterm_to_one_ddp_rank_stops_every_rank_at_the_same_step(background):
    """A preemption notice that reaches one rank only: the ranks agree at the next logging step,
    save one last.pth holding both ranks' random states and the position, and exit cleanly."""
    report, printed, run = _signalled(background, "term")
    log_text = _text(run / "train.log")
    assert report["rc"] == 0 and "stopped by SIGTERM" in log_text, (report, log_text[-2000:])
    last = load_checkpoint(run / "last.pth", required=RESUME_KEYS)
    assert len(last["rng"]) == 2 and f"holds epoch {last['epoch']} + {last['batch']} batches" in log_text
    assert not (run / "train.lock").exists()


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


SURVIVOR = r"""
import os, sys, time
sys.path.insert(0, os.getcwd())
from engine.distributed import all_gather_objects, setup_distributed
env = setup_distributed(device="cpu", timeout_s=float(sys.argv[1]))
all_gather_objects(env.rank)  # both ranks are up
if env.rank == 1:
    if sys.argv[2] == "dies":
        os._exit(3)
    time.sleep(120)  # hangs: alive, holding its connections, never answering
start = time.monotonic()
try:
    while True:
        all_gather_objects(env.rank)
except RuntimeError as err:
    print(f"rank 0 stopped after {time.monotonic() - start:.1f} s: {err}", flush=True)
    os._exit(1)
"""


PEERS = ("dies", "hangs")
FREE_PORT = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"


def _survivor_steps(folder: Path, tests: set[str]) -> dict[str, str]:
    """Rank 1 of two plain processes (no torchrun) dies or hangs; rank 0's output and exit code are
    the step's. In the session's background launches: most of it is waiting for a timeout."""
    steps = {}
    for peer in PEERS:
        if f"test_survivor_fails_within_the_process_group_timeout[{peer}]" in tests:
            survivor = shlex.join([sys.executable, "-c", SURVIVOR, "4", peer])
            steps[f"survivor_{peer}"] = (
                f"export MASTER_ADDR=127.0.0.1 MASTER_PORT=$({shlex.quote(sys.executable)} -c {shlex.quote(FREE_PORT)}) "
                f"WORLD_SIZE=2; RANK=1 LOCAL_RANK=1 {survivor} > /dev/null 2>&1 & peer=$!; "
                f"RANK=0 LOCAL_RANK=0 timeout 90 {survivor}; codes=$?; kill -9 $peer 2> /dev/null; wait $peer"
            )  # the exports end with the step's subshell
    return steps


@pytest.mark.parametrize("peer", PEERS)
def test_survivor_fails_within_the_process_group_timeout(background, peer):
    """Without torchrun watching (e.g. srun sets RANK/WORLD_SIZE), rank 0 itself must not wait forever:
    a dead peer is an immediate error, a hung one an error after engine.distributed's timeout."""
    (code,), out = background.result(f"survivor_{peer}")
    assert code == 1, out[-2000:]
    took = float(out.split("rank 0 stopped after ")[1].split(" s")[0])
    assert took < (2 if peer == "dies" else 10), out[-2000:]
