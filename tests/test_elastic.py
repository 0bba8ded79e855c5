"""Elastic restarts: under ``torchrun --max-restarts``, a worker killed mid-epoch (SIGKILL: no
handler, no save) makes torchrun restart the group; the new group continues from the last
``train.save_every_steps`` save and ends bit-identical to a run never interrupted."""

from __future__ import annotations

from engine.checkpoint import load_checkpoint
from helpers import documented_env, launch, loopback_torchrun, same_training


def test_killed_worker_restarts_from_the_last_save(tmp_path, ddp_run):
    run, log = tmp_path / "run", tmp_path / "torchrun.log"
    # 2 steps per epoch: save at step 3 (epoch 2, batch 1 of 2); rank 1 dies in its 4th batch.
    args = [*ddp_run.args, f"train.run_dir={run}", "train.save_every_steps=3"]
    cmd = loopback_torchrun(args, nnodes=1, nproc=2, max_restarts=1, script="tests/hooked_train.py")
    assert launch([cmd], [log], documented_env(KILL_RANK="1", KILL_AT_BATCH="4")) == [0], log.read_text()[-4000:]

    assert "exitcode: -9" in log.read_text()  # rank 1 was SIGKILLed, then the group restarted
    train_log = (run / "train.log").read_text()
    assert "saved last.pth at epoch 1 + 1 batches (step 3)" in train_log
    assert "resumed from" in train_log and "epoch 1 + 1 batches (step 3) done" in train_log
    same_training(load_checkpoint(run / "last.pth"), load_checkpoint(ddp_run.run / "last.pth"))
