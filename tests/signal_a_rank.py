"""Send a signal to one rank of a torchrun launch mid-training, for tests/test_faults.py.

    python tests/signal_a_rank.py SIGNAL RUN_DIR REPORT -- torchrun ... train.py ...

Starts the command, waits until RUN_DIR/train.log shows a third training step, sends SIGNAL (KILL,
TERM) to the process of LOCAL_RANK=1 and waits for torchrun to end (60 s with KILL, 90 s with
TERM). REPORT (JSON): torchrun's exit code, the seconds from the signal to its end, the workers'
process ids and which of them were still alive afterwards. The launch's output goes to stdout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def main(sig: str, run: Path, report: Path, cmd: list[str]) -> int:
    log = run / "train.log"
    proc = subprocess.Popen(cmd)
    try:
        end = time.monotonic() + 150
        while "step 3 " not in (log.read_text() if log.exists() else ""):
            if time.monotonic() > end or proc.poll() is not None:
                raise SystemExit(f"no third training step in {log} (torchrun: {proc.poll()})")
            time.sleep(0.02)
        workers = children(proc.pid)
        rank1 = next(w for w in workers if b"LOCAL_RANK=1\0" in Path(f"/proc/{w}/environ").read_bytes())
        os.kill(rank1, getattr(signal, f"SIG{sig}"))
        sent = time.monotonic()
        rc = proc.wait(timeout=60 if sig == "KILL" else 90)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    alive = [w for w in workers if Path(f"/proc/{w}").exists()]
    report.write_text(json.dumps({"rc": rc, "took": took, "workers": workers, "alive": alive}))
    return 0


if __name__ == "__main__":
    sig, run, report, sep, *cmd = sys.argv[1:]
    assert sep == "--", "usage: signal_a_rank.py SIGNAL RUN_DIR REPORT -- COMMAND..."
    sys.exit(main(sig, Path(run), Path(report), cmd))
