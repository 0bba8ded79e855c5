"""Kill a training run at random moments and resume it, for tests/test_faults.py (never used by train.py).

    python tests/kill_resume.py OUT SEED [train.py arguments]

In OUT: ``straight/`` (the run never interrupted), ``killed/`` (the same run killed with SIGKILL four
times: once after its first save, once in the middle of a checkpoint write, once while it starts,
once at a random moment after a resume; each time continued with ``train.resume=auto``, then run to
its end) and ``report.json`` (each kill: the moment, the position saved before and after it, the
temporary files left). SEED draws the delays; every check on a kill fails with the history so far.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.checkpoint.training import RESUME_KEYS  # noqa: E402


def temps(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(".*.tmp"))


def count(path: Path, text: str) -> int:
    return path.read_text().count(text) if path.exists() else 0


def checked_state(run: Path) -> tuple[int, int] | None:
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


class Zygote:
    def __init__(self, tmp: Path) -> None:
        self.writes = tmp / "writes.log"
        self.writes.touch()
        env = dict(os.environ, OMP_NUM_THREADS="1", WRITES_LOG=str(self.writes), WRITE_PAUSE_S="0.4")
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


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def main(out: Path, seed: int, run_args: list[str]) -> int:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    history: list = []
    where = f"seed {seed} (E2NET_FAULTS_SEED), no kills yet"
    zygote = Zygote(out)
    try:
        zygote.start([*run_args, f"train.run_dir={out / 'straight'}"])
        assert zygote.wait() == 0, (out / "zygote.err").read_text()[-3000:]
        run = out / "killed"
        argv = [*run_args, f"train.run_dir={run}", "train.resume=auto"]
        for moment in ("after the first save", "mid-write", "while starting", "random"):
            before, writes, resumes = checked_state(run), zygote.n_writes(), count(run / "train.log", "resumed from")
            pid = zygote.start(argv)
            if moment == "after the first save":
                wait_for(lambda: (run / "last.pth").exists(), 60, "the first last.pth")
                time.sleep(rng.uniform(0, 1.5))
            elif moment == "mid-write":
                wait_for(lambda writes=writes: zygote.n_writes() > writes, 60, "a checkpoint write")
            elif moment == "while starting":  # building, or reading last.pth
                time.sleep(rng.uniform(0, 1.0))
            else:  # anywhere in the next two epochs or so, saves included
                wait_for(lambda resumes=resumes: count(run / "train.log", "resumed from") > resumes, 60, "the resume")
                time.sleep(rng.uniform(0, 2.5))
            with contextlib.suppress(ProcessLookupError):  # it may have finished already
                os.kill(pid, signal.SIGKILL)
            status = zygote.wait()
            after = checked_state(run)
            history.append((moment, before, after, temps(run)))
            where = f"seed {seed} (E2NET_FAULTS_SEED), kills so far (moment, before, after, temp files): {history}"
            if status == 0:  # the run finished before the kill landed: nothing left to interrupt
                break
            assert status == -signal.SIGKILL, where
            assert before is None or (after is not None and after >= before), where
            if moment == "mid-write":  # the interrupted file is a temp file; last.pth is the one from before
                assert after == before and any(t.endswith(f".{pid}.tmp") for t in temps(run)), where

        zygote.start(argv)
        assert zygote.wait() == 0, (where, (out / "zygote.err").read_text()[-3000:])
    finally:
        zygote.close()
        (out / "report.json").write_text(json.dumps({"history": history, "where": where}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
