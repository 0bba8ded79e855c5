"""scripts/slurm/train.sbatch: it parses, runs the documented torchrun line, and on SLURM's SIGUSR1
passes the signal on to srun and requeues the job (srun and scontrol played by small stand-ins);
torchrun, run with that line, passes the signal on to train.py, which saves and stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine.checkpoint import load_checkpoint
from helpers import (
    ROOT,
    documented_exports,
    documented_torchrun_line,
)

SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"

# srun: records its arguments, says it is ready, then runs until SIGUSR1 (exit 1, as torchrun does
# after passing a signal on) or until told to end by itself with the code in $SRUN_EXIT.
FAKE_SRUN = """#!/bin/bash
printf '%s\\n' "$@" > "$LOG/srun.args"
trap 'echo USR1 >> "$LOG/srun.signals"; exit 1' USR1
touch "$LOG/srun.ready"
if [ -n "${SRUN_EXIT:-}" ]; then exit "$SRUN_EXIT"; fi
while true; do sleep 0.05; done
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$*" >> "$LOG/scontrol.calls"
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-a17\\ngpu-a18\\n'; fi
"""


def test_parses():
    res = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_runs_the_documented_torchrun_line():
    text = SBATCH.read_text().replace("\\\n", " ")  # join continued lines
    runs = [line for line in text.splitlines() if re.search(r"^\s*(srun .*)?torchrun ", line)]
    assert len(runs) == 1, runs
    line = runs[0][runs[0].index("torchrun ") :].rstrip()
    assert line.removesuffix("&").rstrip() == documented_torchrun_line()
    exported = dict(re.findall(r"^export (\w+)=(\S+)$", text, re.MULTILINE))
    assert documented_exports().items() <= exported.items()


def test_slurm_directives():
    directives = dict(
        re.match(r"#SBATCH --([\w-]+)=?(.*)", line).groups()
        for line in SBATCH.read_text().splitlines()
        if line.startswith("#SBATCH")
    )
    assert directives["signal"] == "B:USR1@120"
    assert directives["ntasks-per-node"] == "1"
    assert "requeue" in directives and directives["open-mode"] == "append"


def _sbatch(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, Path]:
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu-a[17-18]",
        "SLURM_GPUS_ON_NODE": "8",
    }
    proc_env = {**os.environ, **slurm, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), **env}
    cmd = ["bash", str(SBATCH), "--config", "e2net_dinov3.yaml", "train.run_dir=/shared/run"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=proc_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, log


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            pytest.fail(f"{path.name} never appeared: {proc.communicate()[0]}")
        time.sleep(0.05)


def test_usr1_stops_the_step_and_requeues(tmp_path):
    proc, log = _sbatch(tmp_path)
    _wait_for(log / "srun.ready", proc)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 does
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert (log / "srun.signals").read_text() == "USR1\n"
    assert (log / "scontrol.calls").read_text().splitlines() == ["show hostnames gpu-a[17-18]", "requeue 4242"]
    args = (log / "srun.args").read_text().splitlines()
    assert args[: args.index("torchrun")] == ["--ntasks-per-node=1", "--kill-on-bad-exit=0"]
    torchrun = args[args.index("torchrun") :]
    for expected in ("--nnodes=2", "--nproc-per-node=8", "--rdzv-endpoint=gpu-a17:29500", "--rdzv-id=4242"):
        assert expected in torchrun
    assert torchrun[torchrun.index("train.py") :] == [
        "train.py",
        "--config",
        "e2net_dinov3.yaml",
        "train.run_dir=/shared/run",
        "train.resume=auto",
    ]


@pytest.mark.parametrize("code", [0, 3])
def test_a_run_that_ends_is_not_requeued(tmp_path, code):
    proc, log = _sbatch(tmp_path, SRUN_EXIT=str(code))
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == code, out
    assert "requeue" not in (log / "scontrol.calls").read_text()


def test_torchrun_passes_usr1_on_and_the_run_saves_its_position(ddp_run):
    """What srun forwards reaches torchrun, which (--signals-to-handle) passes it to train.py: it
    stops at the next step with the position inside the epoch saved. torchrun itself then ends with
    an error (it stopped on a signal), which the template does not read: it requeues. The launches'
    ``usr1`` step (tests/conftest.py): one process under the documented line, whose rank 0 sends
    SIGUSR1 to torchrun in its 2nd batch."""
    codes, printed = ddp_run.launches.result("usr1")
    run = ddp_run.work / "usr1"
    assert codes != [0]
    assert "stopped by SIGUSR1" in (run / "train.log").read_text(), printed[-3000:]
    ckpt = load_checkpoint(run / "last.pth")  # one process, 4 batches per epoch: stopped inside the first
    assert ckpt["epoch"] == 0 and 2 <= ckpt["batch"] < 4
