"""Two machines on torchrun's c10d rendezvous, played by two launches on the loopback address, with
elastic restarts: the documented multi-node command (docs/distributed.md) under ``--max-restarts=1``
loses the second machine's worker mid-epoch (SIGKILL: no handler, no save), both launchers restart
their workers, the new group continues from the last ``train.save_every_steps`` save, and the run
ends bit-identical to one machine running the same number of processes, never interrupted."""

from __future__ import annotations

from torch.distributed.run import get_args_parser

from engine.checkpoint import load_checkpoint
from helpers import documented_torchrun, same_training


def test_two_nodes_lose_a_worker_restart_and_train_like_one_node(ddp_run):
    """The launches' ``nodes`` step (tests/conftest.py): the documented line started twice at once on
    the loopback address, each launch one machine of one process, ``--max-restarts=1`` and
    ``train.save_every_steps=3``; rank 1 sends itself SIGKILL in its 4th batch (epoch 2)."""
    codes, _ = ddp_run.launches.result("nodes")
    folder = ddp_run.work
    printed = "\n".join((folder / f"node{i}.log").read_text()[-3000:] for i in (0, 1))
    assert codes == [0, 0], printed

    assert "exitcode: -9" in printed  # rank 1 was SIGKILLed, then both machines restarted their workers
    run = folder / "nodes"
    train_log = (run / "train.log").read_text()
    assert "2 process(es) on cpu" in train_log
    assert "saved last.pth at epoch 1 + 1 batches (step 3)" in train_log
    assert "resumed from" in train_log and "epoch 1 + 1 batches (step 3) done" in train_log
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
