"""Checkpoints: atomic writes, exact round trips, the seeds and random states they restore, and refusal of
truncated, corrupt or hostile files."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch

from engine.checkpoint import CheckpointError, library_versions, load_checkpoint, save_checkpoint
from engine.checkpoint import files as ckpt_files
from engine.rng import rng_state, seed_everything, set_rng_state


def _training_state() -> dict:
    """A state like train.py writes: model, AdamW (one step taken), LambdaLR, scaler, RNG, versions."""
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=True).state_dict(),
        "epoch": 3,
        "step": 120,
        "best": 0.81,
        "config": {"train": {"lr": 1e-3, "betas": [0.9, 0.999]}},
        "rng": [rng_state()],
        "versions": library_versions(),
    }


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_is_exact_and_weights_only(tmp_path):
    state = _training_state()
    path = tmp_path / "run" / "last.pth"
    save_checkpoint(path, state)
    again = load_checkpoint(path)
    _assert_same(state, again)
    torch.load(path, weights_only=True)  # the format itself needs no trusted unpickling
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temp file left behind


def test_rng_state_restores_every_generator(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leave a cached gaussian in NumPy's state
    save_checkpoint(tmp_path / "c.pth", {"model": {}, "rng": rng_state()})
    first = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1))
    set_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"])
    second = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random(), random.gauss(0, 1))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2:] == second[2:]


def _draws() -> dict:
    return {"python": random.random(), "numpy": float(np.random.rand()), "torch": float(torch.rand(()))}


def test_seed_everything_seeds_python_numpy_and_torch():
    seed_everything(3)
    first = _draws()
    _draws()  # move every generator on: only the seed brings them back
    seed_everything(3)
    again = _draws()
    seed_everything(4)
    other = _draws()
    for name in first:
        assert again[name] == first[name], f"seed 3 twice gives different {name} draws"
        assert other[name] != first[name], f"seeds 3 and 4 give the same {name} draws"


class _FullDisk:
    """A file that accepts ``capacity`` bytes, then fails like a full disk (ENOSPC)."""

    def __init__(self, f, capacity: int) -> None:
        self.f, self.left = f, capacity

    def write(self, data) -> int:
        if len(data) > self.left:
            raise OSError(28, "No space left on device")
        self.left -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("capacity", [0, 100, 5000])
def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch, capacity):
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "epoch": 1})
    # Real torch.save into a file that fills up part-way (torch then raises a RuntimeError of its own).
    monkeypatch.setattr(ckpt_files, "open", lambda *a, **k: _FullDisk(open(*a, **k), capacity), raising=False)
    with pytest.raises(CheckpointError, match="No space left on device") as err:
        save_checkpoint(path, {"model": {"w": torch.zeros(10_000)}, "epoch": 2})
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_unsaveable_state_is_not_blamed_on_the_disk(tmp_path):
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError), match="lambda|pickle") as err:
        save_checkpoint(tmp_path / "last.pth", {"model": {"f": lambda: 0}})
    assert not isinstance(err.value, CheckpointError)
    assert not list(tmp_path.iterdir())


def test_unwritable_destination_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the run folder should be")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(blocker / "last.pth", {"model": {}})


def test_stale_temp_from_a_killed_writer_is_cleaned(tmp_path):
    stale = tmp_path / ".last.pth.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "last.pth", {"model": {}})
    assert not stale.exists()


@pytest.mark.parametrize("cut", [0, 10, 200, 0.5, 0.9])
def test_truncated_file_is_a_one_line_error(tmp_path, cut):
    good = tmp_path / "good.pth"
    save_checkpoint(good, _training_state())
    data = good.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    msg = str(err.value)
    assert str(bad) in msg and "\n" not in msg


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7])
def test_flipped_bit_is_detected(tmp_path, where):
    """torch.load alone would return silently wrong weights: the archive's CRC-32s catch it."""
    good = tmp_path / "good.pth"
    save_checkpoint(good, {"model": {"w": torch.linspace(0, 1, 50_000)}})
    data = bytearray(good.read_bytes())
    data[int(where * len(data))] ^= 0x10
    bad = tmp_path / "bad.pth"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="bad.pth") as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value)


def test_random_bytes_are_refused(tmp_path):
    bad = tmp_path / "noise.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="noise.pth"):
        load_checkpoint(bad)


class _Exploit:
    """Unpickling this calls os.system: what a hostile .pth does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_hostile_file_never_executes(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": {"w": torch.ones(1)}, "config": _Exploit(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert not marker.exists()
    msg = str(err.value)
    assert "evil.pth" in msg and "\n" not in msg


def test_missing_and_incomplete_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="lacks 'model'"):
        load_checkpoint(tmp_path / "other.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        load_checkpoint(tmp_path / "list.pth")
