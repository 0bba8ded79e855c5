"""Two-process DDP on CPU (gloo) through torchrun, exactly as a user launches it."""

from __future__ import annotations

import torch

from engine.checkpoint import load_checkpoint


def test_two_process_cpu_run(ddp_run):
    run = ddp_run.run
    log_text = (run / "train.log").read_text()
    assert "2 process(es) on cpu" in log_text
    # 8 training images over 2 ranks at batch 2: 2 optimizer steps per epoch, logged once (rank 0 only)
    assert log_text.count("epoch 1 step ") == 2 and log_text.count("epoch 2 validation") == 1
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1
    ckpt = load_checkpoint(run / "last.pth")
    assert (ckpt["epoch"], ckpt["step"]) == (2, 4)
    assert len(ckpt["rng"]) == 2  # both ranks' generators, for an exact resume
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert ckpt["metrics"]["n_images"] == 4  # validation sharded over the ranks, merged back whole
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved from the unwrapped model
