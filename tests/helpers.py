"""Helpers shared by test modules (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shlex
import signal
import socket
import string
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_train(args: list[str]) -> int:
    """train.main in this process, restoring the process-wide torch flags a run sets."""
    import train

    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        return train.main(args)
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


def load_test_cli(module_name: str) -> ModuleType:
    """test.py as a module (its file name would otherwise clash with the standard library's `test`)."""
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model_args(data: Path, encoder: Path) -> list[str]:
    """train.py arguments for a seconds-long model: the default recipe on a 4-block tiny DINOv3
    (``tiny_dinov3_factory(layers=4)``), width 16, 32-px images from ``data``, in float32
    (``train.amp=off``: no CPU probe, the same numbers on every host). Append the run's own
    ``key=value`` overrides (a later value for the same key wins, e.g. ``train.amp=auto``)."""
    return [
        "--config",
        str(ROOT / "e2net_dinov3.yaml"),
        f"model.encoder.pretrained_path={encoder}",
        "model.encoder.layers=[1,2,3,4]",
        "model.channels=16",
        "model.context_heads=2",
        f"data.root={data}",
        "data.image_size=32",
        "train.amp=off",
    ]


# test.py's options when the tests score a checkpoint: one scoring process, no report, float32 (no
# CPU probe), and batches of 2, so that with two processes the ranks hold unequal numbers of batches.
SCORE_ARGS = ["--workers", "1", "--no-report", "eval.batch_size=2", "train.amp=off"]


def torchrun(nproc: int) -> list[str]:
    """The command that launches ``nproc`` local processes of a script the way users run DDP
    (docs/distributed.md, "One machine")."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def same_training(a: dict, b: dict) -> None:
    """Two checkpoints at the same position with bit-identical weights, AdamW moments, schedule,
    best metric and validation metrics."""
    assert (a["epoch"], a["batch"], a["step"]) == (b["epoch"], b["batch"], b["step"])
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa and sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys() and all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i]), i
    assert a["scheduler"] == b["scheduler"] and a["best"] == b["best"] and a["metrics"] == b["metrics"]


# ---- the multi-node command of docs/distributed.md, as the tests run it
DISTRIBUTED_DOC = ROOT / "docs" / "distributed.md"


def _documented_block() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", DISTRIBUTED_DOC.read_text(), re.DOTALL)
    blocks = [b for b in blocks if "torchrun --nnodes=" in b]
    assert len(blocks) == 1, "docs/distributed.md should hold one multi-node torchrun command"
    return blocks[0]


def documented_torchrun_line() -> str:
    """The multi-node torchrun line of docs/distributed.md (scripts/slurm/train.sbatch runs it too)."""
    return next(line for line in _documented_block().splitlines() if line.startswith("torchrun --nnodes="))


def documented_exports() -> dict[str, str]:
    """The environment variables the documented command is run with (its block's ``export`` lines)."""
    return dict(re.findall(r"^export (\w+)=(\S+)$", _documented_block(), re.MULTILINE))


def documented_env(**extra: str) -> dict[str, str]:
    """This process's environment, one thread per process, offline, plus :func:`documented_exports`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **documented_exports(), **extra}


def documented_torchrun(args: list[str], script: str = "train.py", **values: object) -> list[str]:
    """The documented line as an argument list: its shell variables replaced by ``values``,
    ``"$@"`` by ``args``, ``train.py`` by ``script`` and ``torchrun`` by this interpreter's module."""
    cmd: list[str] = []
    for token in shlex.split(documented_torchrun_line()):
        if token == "torchrun":
            cmd += [sys.executable, "-m", "torch.distributed.run"]
        elif token == "$@":
            cmd += args
        elif token == "train.py":
            cmd.append(script)
        else:
            cmd.append(string.Template(token).substitute({k: str(v) for k, v in values.items()}))
    return cmd


def loopback_torchrun(
    args: list[str], *, nnodes: int, nproc: int, max_restarts: int = 0, script: str = "train.py"
) -> list[str]:
    """The documented line for ``nnodes`` launches on this machine (each one "machine"), the
    rendezvous on 127.0.0.1 at a free port under a job id of its own. Launch it ``nnodes`` times."""
    return documented_torchrun(
        args,
        script,
        NNODES=nnodes,
        GPUS_PER_NODE=nproc,
        HEAD_NODE="127.0.0.1",
        PORT=free_port(),
        JOB_ID=f"test-{os.getpid()}-{next(_job_ids)}",
        MAX_RESTARTS=max_restarts,
    )


_job_ids = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmds: list[list[str]], logs: list[Path], env: dict[str, str], timeout: float = 600) -> list[int]:
    """Start every command at once (as on separate machines), each writing to its log; wait for all
    and return their exit codes. On a timeout the ones still running are killed."""
    procs = []
    for cmd, log in zip(cmds, logs, strict=True):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def restored(run: Path) -> dict:
    """The training state in ``run``/last.pth put back into a freshly built run, as train.py does on
    ``train.resume=auto`` (its config, data, model, optimizer and schedule built anew, nothing
    trained), and taken out again: an exact resume starts from precisely what was saved when this
    equals last.pth (:func:`same_training`, plus the random states and the epoch's loss sums)."""
    import train
    from config import load_config
    from engine.amp import resolve_precision
    from engine.checkpoint.run import RunCheckpoints, read_resume
    from engine.checkpoint.training import training_checkpoint
    from engine.distributed import setup_distributed

    cfg = load_config(run / "config.yaml", [f"train.run_dir={run}", "train.resume=auto"])
    env = setup_distributed()
    resume = read_resume(cfg.train.resume, run)
    precision = resolve_precision(cfg, env.device, resumed=resume.config)
    train_loader, _ = train.build_data(cfg, env)
    model = train.build_model(cfg)
    state = train.build_state(cfg, model, len(train_loader), precision.grad_scaler(), env)
    RunCheckpoints(state).restore(resume, len(train_loader))
    return training_checkpoint(state)


def round_trips(run: Path) -> None:
    """Asserts that ``run``'s last.pth survives :func:`restored` whole."""
    from engine.checkpoint import load_checkpoint

    saved, again = load_checkpoint(run / "last.pth"), restored(run)
    same_training(saved, again)
    assert _same(saved["rng"], again["rng"]) and _same(saved["epoch_loss"], again["epoch_loss"])


def _same(a, b) -> bool:
    """Nested containers of tensors and plain values, equal throughout."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


class Launches:
    """Subprocess launches run one after another by a shell in the background from the start of the
    session, on the core the in-process tests leave idle; steps that mostly wait (sleeps, timeouts,
    the moments they strike at) in a second shell beside it, so that their waiting holds up nothing.
    No thread in this process (its forks stay safe): one ``Popen`` per shell, whose steps each write
    ``<name>.log`` and, once done, ``<name>.rc`` (the exit codes, one per launch of the step)."""

    def __init__(self, folder: Path, steps: dict[str, str], env: dict[str, str], waiting: set[str] = frozenset()):
        self.folder, self.shell_of = folder, {}
        for shell, wait in (("launches", False), ("waiting", True)):
            script = [f"cd {shlex.quote(str(ROOT))}"]
            for name in (n for n in steps if (n in waiting) == wait):
                log, rc = (shlex.quote(str(folder / f"{name}.{ext}")) for ext in ("log", "rc"))
                # A subshell each: nothing a step sets reaches the next; ``codes`` may name several exit codes.
                script.append(f"( {steps[name]}\n  echo ${{codes:-$?}} > {rc}.tmp ) > {log} 2>&1; mv {rc}.tmp {rc}")
                self.shell_of[name] = shell
            (folder / f"{shell}.sh").write_text("\n".join(script) + "\n")
        shells = set(self.shell_of.values())
        self.shells = {
            shell: subprocess.Popen(["bash", str(folder / f"{shell}.sh")], env=env, start_new_session=True)
            for shell in shells
        }

    def result(self, name: str, timeout: float = 900) -> tuple[list[int], str]:
        """(exit codes, what was printed) of step ``name``, once it is done."""
        assert name in self.shell_of, f"no background step {name} (this session does not need it)"
        rc, end, shell = self.folder / f"{name}.rc", time.monotonic() + timeout, self.shells[self.shell_of[name]]
        while not rc.exists():
            assert shell.poll() is None or rc.exists(), f"the background launches ended before step {name}"
            assert time.monotonic() < end, f"step {name} of the background launches took over {timeout} s"
            time.sleep(0.1)
        return [int(c) for c in rc.read_text().split()], (self.folder / f"{name}.log").read_text()

    def stop(self) -> None:
        for shell in self.shells.values():
            if shell.poll() is None:
                os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
