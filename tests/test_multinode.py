"""Two machines on torchrun's c10d rendezvous, played by two launches on the loopback address, with
elastic restarts: the documented multi-node command (docs/distributed.md) under ``--max-restarts=1``
loses the second machine's worker mid-epoch (SIGKILL: no handler, no save), both launchers restart
their workers, the new group continues from the last ``train.save_every_steps`` save, and the run
ends bit-identical to one machine running the same number of processes, never interrupted."""

from __future__ import annotations

from torch.distributed.run import get_args_parser

from engine.checkpoint import load_checkpoint
from helpers import documented_env, documented_torchrun, launch, loopback_torchrun, same_training


def test_two_nodes_lose_a_worker_restart_and_train_like_one_node(tmp_path, ddp_run):
    run = tmp_path / "run"
    # 2 steps per epoch: save at step 3 (epoch 2, batch 1 of 2); rank 1 dies in its 4th batch.
    args = [*ddp_run.args, f"train.run_dir={run}", "train.save_every_steps=3"]
    node = loopback_torchrun(args, nnodes=2, nproc=1, max_restarts=1, script="tests/hooked_train.py")
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    codes = launch([node, node], logs, documented_env(KILL_RANK="1", KILL_AT_BATCH="4"))
    printed = "\n".join(log.read_text()[-3000:] for log in logs)
    assert codes == [0, 0], printed

    assert "exitcode: -9" in printed  # rank 1 was SIGKILLed, then both machines restarted their workers
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
