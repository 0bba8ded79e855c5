"""Two machines on torchrun's c10d rendezvous, played by two launches on the loopback address: the
documented multi-node command (docs/distributed.md) trains to the same weights, bit for bit, as one
machine running the same number of processes."""

from __future__ import annotations

import os
import re
import shlex
import socket
import string
import subprocess
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_checkpoint
from helpers import ROOT, tiny_model_args, torchrun

DOC = ROOT / "docs" / "distributed.md"


def _documented_block() -> str:
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.DOTALL) if "torchrun --nnodes=" in b]
    assert len(blocks) == 1, "docs/distributed.md should hold one multi-node torchrun command"
    return blocks[0]


def documented_torchrun_line() -> str:
    """The multi-node torchrun line of docs/distributed.md (the SLURM template runs it too)."""
    return next(line for line in _documented_block().splitlines() if line.startswith("torchrun --nnodes="))


def documented_exports() -> dict[str, str]:
    """The environment variables the documented command exports."""
    return dict(re.findall(r"^export (\w+)=(\S+)$", _documented_block(), re.MULTILINE))


def documented_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **documented_exports()}


def documented_torchrun(args: list[str], script: str = "train.py", **values: object) -> list[str]:
    """The documented line as an argument list: its shell variables replaced by ``values``,
    ``"$@"`` by ``args``, ``train.py`` by ``script`` and ``torchrun`` by this interpreter's module."""
    cmd: list[str] = []
    for token in shlex.split(documented_torchrun_line()):
        if token == "torchrun":
            cmd += torchrun(1)[:3]  # [python, -m, torch.distributed.run]
        elif token == "$@":
            cmd += args
        elif token == "train.py":
            cmd.append(script)
        else:
            cmd.append(string.Template(token).substitute({k: str(v) for k, v in values.items()}))
    return cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(cmds: list[list[str]], logs: list[Path], timeout: float = 300) -> list[int]:
    """Start every command at once (as on separate machines) and wait for all; on a timeout the ones
    still running are killed."""
    procs = []
    for cmd, log in zip(cmds, logs):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=documented_env(), stdout=out, stderr=subprocess.STDOUT))
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def same_weights(a: dict, b: dict) -> None:
    assert (a["epoch"], a["batch"], a["step"]) == (b["epoch"], b["batch"], b["step"])
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa and sa.keys() == sb.keys()
    for i in sa:
        assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i]), i


@pytest.fixture(scope="module")
def train_args(tmp_path_factory, tiny_dinov3_factory) -> list[str]:
    from scripts.make_synthetic_cod import generate

    data = tmp_path_factory.mktemp("synth")
    generate(data, n_train=12, n_test=0, size=48, seed=0)
    return [
        *tiny_model_args(data, tiny_dinov3_factory(layers=4)),
        "data.val_fraction=0.34",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.log_interval=1",
        "train.epochs=2",
    ]


def test_two_nodes_train_like_one_node(tmp_path, train_args):
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    reference = [*torchrun(2), "train.py", *train_args, f"train.run_dir={one}"]
    node = documented_torchrun(
        [*train_args, f"train.run_dir={two}"],
        NNODES=2,
        GPUS_PER_NODE=1,
        HEAD_NODE="127.0.0.1",
        PORT=free_port(),
        JOB_ID=f"test-{os.getpid()}",
        MAX_RESTARTS=0,
    )
    logs = [tmp_path / f"{name}.log" for name in ("one_node", "node0", "node1")]
    assert run_all([reference], logs[:1]) == [0], logs[0].read_text()[-3000:]
    codes = run_all([node, node], logs[1:])
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs[1:])

    assert "2 process(es) on cpu" in (two / "train.log").read_text()
    same_weights(load_checkpoint(two / "last.pth"), load_checkpoint(one / "last.pth"))


def test_documented_line_is_a_torchrun_command():
    """The placeholders the tests fill are the ones the line uses, and torchrun accepts the line."""
    cmd = documented_torchrun(
        ["--config", "x.yaml"], NNODES=2, GPUS_PER_NODE=1, HEAD_NODE="h", PORT=1, JOB_ID="j", MAX_RESTARTS=0
    )
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(cmd[3:])
    assert (parsed.nnodes, parsed.nproc_per_node, parsed.rdzv_backend) == ("2", "1", "c10d")
    assert (parsed.rdzv_endpoint, parsed.rdzv_id, parsed.max_restarts) == ("h:1", "j", 0)
    assert "SIGUSR1" in parsed.signals_to_handle
    assert parsed.training_script == "train.py"
    assert parsed.training_script_args == ["--config", "x.yaml", "train.resume=auto"]
