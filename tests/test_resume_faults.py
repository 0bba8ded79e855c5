"""Nothing silently wrong at the checkpoint boundary: a diverged model never becomes best.pth, a
checkpoint is never half-loaded or loaded into another encoder unnoticed, a changed learning rate
is applied on resume, and every broken run folder or checkpoint entry is one line naming the file."""

from __future__ import annotations

import argparse
import errno
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import build
import datasets
from config import load_config, to_dict
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.checkpoint.training import restore_training, training_checkpoint
from engine.state import TrainState
from helpers import ROOT, load_test_cli, run_train


@pytest.fixture
def args(tiny_run) -> list[str]:
    return tiny_run.args


@pytest.fixture
def one_epoch(tiny_run):
    """The shared run folder after 1 of 2 epochs (2 steps each): last.pth and best.pth."""
    return tiny_run.one_epoch


@pytest.fixture(scope="module")
def cli():
    return load_test_cli("e2net_test_cli_resume_faults")


def _one_error(text: str, *parts: str) -> str:
    errors = [x for x in text.splitlines() if "error:" in x or " ERROR " in x]
    assert "Traceback" not in text and len(errors) == 1, text[-3000:]
    for p in parts:
        assert p in errors[0], (p, errors[0])
    return errors[0]


# --------------------------------------------------------------------------- the resume path
def test_a_folder_at_the_resume_path_stops_before_anything_is_written(tmp_path, capsys, args):
    run = tmp_path / "run"
    (run / "last.pth").mkdir(parents=True)
    (run / "best.pth").write_bytes(b"the best weights")
    assert run_train([*args, f"train.run_dir={run}"]) == 2
    _one_error(capsys.readouterr().err, "last.pth' is a folder", "train.resume")
    assert {p.name for p in run.iterdir()} == {"last.pth", "best.pth"}
    assert (run / "best.pth").read_bytes() == b"the best weights"


def _malform(ckpt: dict, what: str) -> None:
    if what == "model is a tensor":
        ckpt["model"] = torch.ones(3)
    elif what == "scheduler is a string":
        ckpt["scheduler"] = "cosine"
    elif what == "scheduler entries of the wrong type":
        ckpt["scheduler"] = {**ckpt["scheduler"], "last_epoch": "two", "base_lrs": 3}
    elif what == "rng is not a state":
        ckpt["rng"] = [{"python": 1}]
    elif what == "rng of the wrong size":
        ckpt["rng"][0]["torch"] = torch.zeros(3, dtype=torch.uint8)
    elif what == "epoch 10**12":
        ckpt["epoch"] = 10**12
    elif what == "step -100":
        ckpt["step"] = -100
    elif what == "batch beyond the epoch":
        ckpt["batch"] = 50
    elif what == "weights are NaN":
        ckpt["model"][next(iter(ckpt["model"]))].fill_(float("nan"))


MALFORMED = [
    ("model is a tensor", "'model' entry is a Tensor"),
    ("scheduler is a string", "'scheduler' entry"),
    ("scheduler entries of the wrong type", "'scheduler' entry"),
    ("rng is not a state", "'rng' entry is malformed"),
    ("rng of the wrong size", "'rng' entry is malformed"),
    ("epoch 10**12", "entry 'epoch' is 1000000000000, outside [0, 2]"),
    ("step -100", "entry 'step' is -100"),
    ("batch beyond the epoch", "entry 'batch' is 50, outside [0, 2] (the training data"),
    ("weights are NaN", "holds NaN or Inf"),
]


@pytest.mark.parametrize("what, says", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_checkpoint_entry_is_one_line_naming_the_file(tmp_path, capsys, args, one_epoch, what, says):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = load_checkpoint(one_epoch / "last.pth")
    _malform(ckpt, what)
    save_checkpoint(run / "last.pth", ckpt)
    before = (run / "last.pth").read_bytes()
    assert run_train([*args, f"train.run_dir={run}"]) == 1
    _one_error(capsys.readouterr().err, f"{run / 'last.pth'}", says)
    assert (run / "last.pth").read_bytes() == before and not (run / "best.pth").exists()


# --------------------------------------------------------------------------- hyperparameters on resume
def _state(tiny, lr: float, weight_decay: float) -> TrainState:
    from engine.optim import build_optimizer, build_scheduler

    cfg = load_config(
        None,
        [
            f"model.encoder.pretrained_path={tiny}",
            "model.encoder.layers=[1,2,3,4]",
            "model.channels=16",
            "model.context_heads=2",
            "data.image_size=32",
            "train.amp=off",
        ],
    )
    model = build.build_model(cfg)
    optimizer = build_optimizer(model, lr, weight_decay)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=2, min_ratio=0.1)
    return TrainState(cfg, model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))


def test_a_changed_lr_and_weight_decay_take_effect_on_resume(tiny_dinov3_factory):
    tiny = tiny_dinov3_factory(layers=4)
    old = _state(tiny, lr=1e-3, weight_decay=0.05)
    for _ in range(3):
        old.scheduler.step()
    factor = old.optimizer.param_groups[0]["lr"] / 1e-3
    new = _state(tiny, lr=4e-3, weight_decay=0.2)
    restore_training(new, training_checkpoint(old), ROOT / "last.pth", batches_per_epoch=2)
    for g in new.optimizer.param_groups:
        assert g["initial_lr"] == pytest.approx(4e-3) and g["lr"] == pytest.approx(4e-3 * factor)
        assert g["weight_decay"] == (0.2 if g["name"].endswith("/decay") else 0.0)
    new.scheduler.step()
    old.scheduler.step()  # the schedule goes on from the same point, at the new base rate
    assert new.optimizer.param_groups[0]["lr"] == pytest.approx(4 * old.optimizer.param_groups[0]["lr"])


# --------------------------------------------------------------------------- test.py --ckpt
def _load(cli, ckpt, *overrides: str):
    """test.py's model loading, in float32 (no CPU probe)."""
    ns = argparse.Namespace(ckpt=ckpt, config=None, overrides=["train.amp=off", *overrides], data_root=None)
    return cli.load_model(ns)


def test_test_py_refuses_non_finite_weights_naming_the_tensor(tmp_path, cli, one_epoch, capsys):
    ckpt = load_checkpoint(one_epoch / "best.pth")
    name = sorted(ckpt["model"])[3]
    ckpt["model"][name].view(-1)[0] = float("inf")
    save_checkpoint(tmp_path / "diverged.pth", ckpt)
    with pytest.raises(CheckpointError, match=f"weight '{name}' holds NaN or Inf"):
        _load(cli, tmp_path / "diverged.pth")
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((40, 40, 3), np.uint8))
    argv = ["--ckpt", str(tmp_path / "diverged.pth"), "--images", str(tmp_path / "images"), "train.amp=off"]
    assert cli.main(argv) == 1
    _one_error(capsys.readouterr().err, "diverged.pth", name)


def test_loading_never_discards_fine_tuned_encoder_weights(tmp_path, cli, one_epoch):
    stored = load_checkpoint(one_epoch / "best.pth")
    cfg = load_config(stored["config"], ["model.encoder.freeze=false"])
    tuned = build.build_model(cfg)
    save_checkpoint(tmp_path / "tuned.pth", {"model": tuned.trainable_state_dict(), "config": to_dict(cfg)})
    _load(cli, tmp_path / "tuned.pth")  # as trained: everything loads
    with pytest.raises(CheckpointError, match=r"holds \d+ encoder weights that this config keeps frozen \(encoder\."):
        _load(cli, tmp_path / "tuned.pth", "model.encoder.freeze=true")


def test_another_frozen_encoder_is_a_loud_warning(tmp_path, cli, one_epoch, tiny_dinov3_factory, caplog):
    with caplog.at_level(logging.WARNING):
        _load(cli, one_epoch / "best.pth")
    assert "FROZEN ENCODER DIFFERS" not in caplog.text
    other = tiny_dinov3_factory(layers=4, seed=1)  # the same shapes, other weights
    with caplog.at_level(logging.WARNING):
        _load(cli, one_epoch / "best.pth", f"model.encoder.pretrained_path={other}")
    assert "THE FROZEN ENCODER DIFFERS" in caplog.text and str(other) in caplog.text


# --------------------------------------------------------------------------- failures mid-run
@pytest.mark.parametrize("where", ["predictions", "weights"])
def test_a_diverged_model_never_becomes_best(tmp_path, monkeypatch, capsys, args, where):
    """A model that diverged without tripping the non-finite-step guard (its streak is not reached):
    NaN validation maps are not a candidate for best.pth; NaN weights stop the run, nothing saved."""
    import train

    if where == "predictions":  # finite weights, NaN maps (overflowing activations)
        build_model = build.build_model

        def diverged(cfg):
            model = build_model(cfg)
            model.decoder.register_forward_hook(lambda m, i, out: None if m.training else [o * torch.nan for o in out])
            return model

        monkeypatch.setattr(train, "build_model", diverged)
    else:  # an update that turned a weight into NaN (e.g. an overflow inside the optimizer)
        optimizer_for = train.optimizer_for

        def diverging(*a, **kw):
            opt = optimizer_for(*a, **kw)
            opt.register_step_post_hook(lambda o, *_: o.param_groups[0]["params"][0].data.fill_(torch.nan))
            return opt

        monkeypatch.setattr(train, "optimizer_for", diverging)
    run = tmp_path / "run"
    rc = run_train([*args, f"train.run_dir={run}", "train.max_nonfinite=1000", "train.max_steps=2"])
    line = _one_error(capsys.readouterr().err, "NaN")
    assert not (run / "best.pth").exists()
    if where == "predictions":
        assert rc == 0 and "not a candidate for best.pth" in line
    else:
        assert rc == 1 and "has diverged" in line and not (run / "last.pth").exists()


def test_tensorboard_on_a_full_disk_is_the_checkpoint_message(tmp_path, monkeypatch, capsys, args):
    from tensorboard.summary.writer import record_writer

    real, writes = record_writer.RecordWriter.write, [0]

    def write(self, data):
        writes[0] += 1
        if writes[0] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    run = tmp_path / "run"
    assert run_train([*args, f"train.run_dir={run}", "train.log_interval=1"]) == 1
    line = _one_error(capsys.readouterr().err, "cannot write TensorBoard events", "No space left on device")
    assert line.split("ERROR", 1)[1] in (run / "train.log").read_text()


def test_training_files_deleted_mid_run_are_one_line(tmp_path, monkeypatch, capsys, args):
    real = datasets.build_train_val

    def build_then_delete(cfg):
        train, val = real(cfg)
        for s in train.samples:
            Path(s.image_path).unlink()  # the whole block vanishes after start-up
        return train, val

    data = tmp_path / "data"
    shutil.copytree(next(a.split("=", 1)[1] for a in args if a.startswith("data.root=")), data)
    monkeypatch.setattr(datasets, "build_train_val", build_then_delete)
    run = tmp_path / "run"
    assert run_train([*args, f"train.run_dir={run}", f"data.root={data}"]) == 1
    line = _one_error(capsys.readouterr().err, "failed to load")
    assert line.split("ERROR", 1)[1] in (run / "train.log").read_text()
