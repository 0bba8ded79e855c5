"""Two-process DDP on CPU (gloo) through torchrun, exactly as a user launches it."""

from __future__ import annotations

import os
import subprocess

import torch

from engine.checkpoint import load_checkpoint
from helpers import ROOT, tiny_model_args, torchrun


def test_two_process_cpu_run(tmp_path, tiny_dinov3_factory, synthetic_cod):
    run = tmp_path / "run"
    encoder = tiny_dinov3_factory(layers=4)
    cmd = [
        *torchrun(2),
        "train.py",
        *tiny_model_args(synthetic_cod, encoder),
        "data.val_fraction=0.34",
        "train.batch_size=2",
        "train.num_workers=0",
        "train.log_interval=1",
        "train.epochs=2",
        f"train.run_dir={run}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]

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
