"""Two machines on torchrun's c10d rendezvous, played by two launches on the loopback address: the
documented multi-node command (docs/distributed.md) trains to the same weights, bit for bit, as one
machine running the same number of processes."""

from __future__ import annotations

from torch.distributed.run import get_args_parser

from engine.checkpoint import load_checkpoint
from helpers import documented_env, documented_torchrun, launch, loopback_torchrun, same_training


def test_two_nodes_train_like_one_node(tmp_path, ddp_run):
    run = tmp_path / "run"
    node = loopback_torchrun([*ddp_run.args, f"train.run_dir={run}"], nnodes=2, nproc=1)
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    codes = launch([node, node], logs, documented_env())
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)

    assert "2 process(es) on cpu" in (run / "train.log").read_text()
    same_training(load_checkpoint(run / "last.pth"), load_checkpoint(ddp_run.run / "last.pth"))


def test_documented_line_is_a_torchrun_command():
    """The placeholders the tests fill are the ones the line uses, and torchrun accepts the line."""
    cmd = documented_torchrun(
        ["--config", "x.yaml"], NNODES=2, GPUS_PER_NODE=1, HEAD_NODE="h", PORT=1, JOB_ID="j", MAX_RESTARTS=0
    )
    parsed = get_args_parser().parse_args(cmd[3:])
    assert (parsed.nnodes, parsed.nproc_per_node, parsed.rdzv_backend) == ("2", "1", "c10d")
    assert (parsed.rdzv_endpoint, parsed.rdzv_id, parsed.max_restarts) == ("h:1", "j", 0)
    assert "SIGUSR1" in parsed.signals_to_handle
    assert parsed.training_script == "train.py"
    assert parsed.training_script_args == ["--config", "x.yaml", "train.resume=auto"]
