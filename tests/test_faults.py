"""Faults: SIGKILL at random moments (mid-checkpoint-write included), dead or hung DDP workers.
Every run here is a real train.py run of a tiny model (disk faults: test_disk_faults.py)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.checkpoint.training import RESUME_KEYS
from helpers import ROOT, run_train, torchrun

ENV = dict(
    os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
)
EPOCHS, STEPS_PER_EPOCH = 6, 2  # 8 training images at batch 4
# Seeds the SIGKILL test's random delays; a failure names its seed: E2NET_FAULTS_SEED=<seed> replays the delays.
SEED = int(os.environ.get("E2NET_FAULTS_SEED", "0"))


@pytest.fixture
def run_args(tiny_run) -> list[str]:
    """train.py arguments of the shared seconds-long run, trained for EPOCHS epochs."""
    return [*tiny_run.args, f"train.epochs={EPOCHS}"]


def _temps(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(".*.tmp"))


def _count(path: Path, text: str) -> int:
    return path.read_text().count(text) if path.exists() else 0


def _checked_state(run: Path) -> tuple[int, int] | None:
    """(epoch, step) of the run folder's last.pth (None if there is none yet); every checkpoint must load."""
    if (run / "best.pth").exists():
        load_checkpoint(run / "best.pth")
    if not (run / "last.pth").exists():
        return None
    ckpt = load_checkpoint(run / "last.pth", required=RESUME_KEYS)
    return ckpt["epoch"], ckpt["step"]


# --------------------------------------------------------------------------- SIGKILL
# One process pays for the imports; each run is a fork of it (a real process running train.main, killed
# with a real SIGKILL). Its torch.save stops half-way through each file for WRITE_PAUSE_S and says so in
# WRITES_LOG, so that a kill can be aimed at the middle of a checkpoint write.
ZYGOTE = r"""
import io, json, os, sys, time
sys.path.insert(0, os.getcwd())
import torch
import train

real_save = torch.save

def paused_save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    with open(os.environ["WRITES_LOG"], "a") as log:
        log.write(getattr(f, "name", "?") + "\n")
    time.sleep(float(os.environ["WRITE_PAUSE_S"]))
    f.write(data[len(data) // 2:])

torch.save = paused_save
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = train.main(json.loads(line))
        finally:
            os._exit(code)
    print("pid", pid, flush=True)
    print("status", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class _Zygote:
    def __init__(self, tmp: Path) -> None:
        self.writes = tmp / "writes.log"
        self.writes.touch()
        env = dict(ENV, WRITES_LOG=str(self.writes), WRITE_PAUSE_S="0.4")
        self.err = open(tmp / "zygote.err", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            cwd=ROOT,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(x.split()) for x in self.proc.stdout], daemon=True).start()
        assert self._next("ready", 120) == []

    def _next(self, word: str, timeout: float) -> list[str]:
        try:
            head, *rest = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no '{word}' from the training process in {timeout} s") from None
        assert head == word, (head, rest)
        return rest

    def start(self, argv: list[str]) -> int:
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        return int(self._next("pid", 60)[0])

    def wait(self, timeout: float = 120) -> int:
        return int(self._next("status", timeout)[0])

    def n_writes(self) -> int:
        return len(self.writes.read_text().splitlines())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.err.close()


def _wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_sigkill_at_random_moments_then_resume(tmp_path, run_args):
    """Kill a training run 4 times (once mid-write of a checkpoint, once while it starts), resume each
    time with train.resume=auto, and end with exactly the weights of a run that was never interrupted."""
    print(f"random delays from seed {SEED}: replay with E2NET_FAULTS_SEED={SEED}")  # shown if the test fails
    rng = random.Random(SEED)
    where = f"seed {SEED} (E2NET_FAULTS_SEED), no kills yet"
    # The uninterrupted run: in this process, without the forks' paused writes; on one thread, as they
    # run (OMP_NUM_THREADS=1), since the thread count changes the sums' rounding.
    straight, threads = tmp_path / "straight", torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_train([*run_args, f"train.run_dir={straight}"]) == 0
    finally:
        torch.set_num_threads(threads)
    zygote = _Zygote(tmp_path)
    try:
        run = tmp_path / "killed"
        argv = [*run_args, f"train.run_dir={run}", "train.resume=auto"]
        history = []
        for moment in ("after the first save", "mid-write", "while starting", "random"):
            before, writes, resumes = _checked_state(run), zygote.n_writes(), _count(run / "train.log", "resumed from")
            pid = zygote.start(argv)
            if moment == "after the first save":
                _wait_for(lambda: (run / "last.pth").exists(), 60, "the first last.pth")
                time.sleep(rng.uniform(0, 1.5))
            elif moment == "mid-write":
                _wait_for(lambda writes=writes: zygote.n_writes() > writes, 60, "a checkpoint write")
            elif moment == "while starting":  # building, or reading last.pth
                time.sleep(rng.uniform(0, 1.0))
            else:  # anywhere in the next two epochs or so, saves included
                _wait_for(lambda resumes=resumes: _count(run / "train.log", "resumed from") > resumes, 60, "the resume")
                time.sleep(rng.uniform(0, 2.5))
            with contextlib.suppress(ProcessLookupError):  # it may have finished already
                os.kill(pid, signal.SIGKILL)
            status = zygote.wait()
            after = _checked_state(run)
            history.append((moment, before, after, _temps(run)))
            where = f"seed {SEED} (E2NET_FAULTS_SEED), kills so far (moment, before, after, temp files): {history}"
            if status == 0:  # the run finished before the kill landed: nothing left to interrupt
                break
            assert status == -signal.SIGKILL, where
            assert before is None or (after is not None and after >= before), where
            if moment == "mid-write":  # the interrupted file is a temp file; last.pth is the one from before
                assert after == before and any(t.endswith(f".{pid}.tmp") for t in _temps(run)), where

        zygote.start(argv)
        assert zygote.wait() == 0, (where, (tmp_path / "zygote.err").read_text()[-3000:])
    finally:
        zygote.close()

    assert _checked_state(run) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH), where
    assert not _temps(run), where  # the next save cleaned up what the killed writer left
    log_text = (run / "train.log").read_text()
    assert log_text.count("resumed from") >= 2, where
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(run / "last.pth")
    for k in a["model"]:  # the interruptions changed nothing: no step lost, none done twice
        assert torch.equal(a["model"][k], b["model"][k]), (k, where)
    assert a["best"] == b["best"], where


# --------------------------------------------------------------------------- DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_dead_ddp_worker_stops_the_whole_run(tmp_path, run_args):
    """torchrun, 2 CPU processes (gloo): SIGKILL rank 1 mid-training; rank 0 must not wait for it."""
    run = tmp_path / "run"
    cmd = [
        *torchrun(2),
        str(ROOT / "train.py"),
        *run_args,
        f"train.run_dir={run}",
        "train.epochs=200",
        "train.batch_size=2",
    ]
    with open(tmp_path / "torchrun.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for(
                lambda: "step 3 " in ((run / "train.log").read_text() if (run / "train.log").exists() else ""),
                150,
                "three training steps",
            )
            workers = _children(proc.pid)
            assert len(workers) == 2, workers
            victim = next(w for w in workers if b"LOCAL_RANK=1\0" in Path(f"/proc/{w}/environ").read_bytes())
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            rc = proc.wait(timeout=60)
            took = time.monotonic() - killed_at
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rc != 0 and took < 30, (rc, took)
    assert not any(Path(f"/proc/{w}").exists() for w in workers)  # no orphan left behind
    assert "exitcode  : -9" in (tmp_path / "torchrun.log").read_text()  # torchrun names the dead rank
    _checked_state(run)  # whatever was saved still loads


def test_sigterm_to_one_ddp_rank_stops_every_rank_at_the_same_step(tmp_path, run_args):
    """A preemption notice that reaches one rank only: the ranks agree at the next logging step,
    save one last.pth holding both ranks' random states and the position, and exit cleanly."""
    run = tmp_path / "run"
    cmd = [
        *torchrun(2),
        str(ROOT / "train.py"),
        *run_args,
        f"train.run_dir={run}",
        "train.epochs=200",
        "train.batch_size=2",
    ]
    with open(tmp_path / "torchrun.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: "step 3 " in _text(run / "train.log"), 150, "three training steps")
            workers = _children(proc.pid)
            rank1 = next(w for w in workers if b"LOCAL_RANK=1\0" in Path(f"/proc/{w}/environ").read_bytes())
            os.kill(rank1, signal.SIGTERM)
            rc = proc.wait(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log_text = _text(run / "train.log")
    assert rc == 0 and "stopped by SIGTERM" in log_text, (rc, log_text[-2000:])
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


@pytest.mark.parametrize("peer", ["dies", "hangs"])
def test_survivor_fails_within_the_process_group_timeout(tmp_path, peer):
    """Without torchrun watching (e.g. srun sets RANK/WORLD_SIZE), rank 0 itself must not wait forever:
    a dead peer is an immediate error, a hung one an error after engine.distributed's timeout."""
    env = dict(ENV, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SURVIVOR, "4", peer],
            cwd=ROOT,
            text=True,
            env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in (0, 1)
    ]
    try:
        out, _ = procs[0].communicate(timeout=90)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode == 1, out[-2000:]
    took = float(out.split("rank 0 stopped after ")[1].split(" s")[0])
    assert took < (2 if peer == "dies" else 10), out[-2000:]
