"""A full disk or a read-only run folder: a clear error at the first failed write, the previous checkpoint
untouched. Real file systems where the kernel allows a private mount namespace, simulations otherwise."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_faults import STEPS_PER_EPOCH

from engine.checkpoint import CheckpointError, load_checkpoint
from helpers import run_train
from kill_resume import checked_state, temps


@pytest.fixture
def run_args(tiny_run) -> list[str]:
    return tiny_run.args


@pytest.fixture
def one_epoch_run(tiny_run) -> Path:
    """The shared run folder after 1 of 2 epochs."""
    assert checked_state(tiny_run.one_epoch) == (1, STEPS_PER_EPOCH)
    return tiny_run.one_epoch


class _FillingDisk:
    """``open`` whose files take ``room`` bytes in all, then fail as a full disk does (and stays)."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        write, disk = f.write, self

        def limited(data):
            if len(data) > disk.room:
                disk.room = 0
                raise OSError(28, "No space left on device")
            disk.room -= len(data)
            return write(data)

        f.write = limited
        return f


def test_disk_filling_up_mid_run_stops_at_the_failed_save(tmp_path, monkeypatch, run_args, one_epoch_run, caplog):
    """Simulated in-process (the room left is counted in engine.checkpoint.files' writes): the resumed run
    trains epoch 2, its save fails, the run stops with one line and epoch 1's checkpoint is intact."""
    import engine.checkpoint.files

    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    before = (run / "last.pth").read_bytes()
    monkeypatch.setattr(engine.checkpoint.files, "open", _FillingDisk(len(before) // 2), raising=False)
    assert run_train([*run_args, f"train.run_dir={run}", "train.epochs=2"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "No space left on device" in errors[0], errors
    assert "\n" not in errors[0] and f"'{run / 'last.pth'}'" in errors[0]
    assert (run / "last.pth").read_bytes() == before and not temps(run)


@pytest.mark.parametrize("room", ["half a checkpoint", "a few log lines"])
def test_disk_full_for_train_log_too_is_still_one_line(tmp_path, monkeypatch, run_args, one_epoch_run, capsys, room):
    """train.log shares the full disk: whether the first failed write is the checkpoint (then the error's own
    log line fails) or a log line mid-epoch, the run stops with the checkpoint writer's one line, no traceback."""
    import logging

    import engine.checkpoint.files

    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    before = (run / "last.pth").read_bytes()
    disk = _FillingDisk(len(before) // 2 if room == "half a checkpoint" else 600)
    monkeypatch.setattr(engine.checkpoint.files, "open", disk, raising=False)
    # How FileHandler opens train.log: the logging module's `open` (Python 3.11), a class attribute later.
    monkeypatch.setattr(logging, "open", disk, raising=False)
    if hasattr(logging.FileHandler, "_builtin_open"):
        monkeypatch.setattr(logging.FileHandler, "_builtin_open", disk)
    assert run_train([*run_args, f"train.run_dir={run}", "train.epochs=2"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err[-3000:]
    full = [line for line in err.splitlines() if "No space left on device" in line]
    assert len(full) == 1 and "cannot write" in full[0] and "checkpoints already saved are untouched" in full[0], err
    assert (run / "last.pth").read_bytes() == before and not temps(run)


def _unshare_works() -> bool:
    try:
        return (
            subprocess.run(
                ["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/tmp"], capture_output=True, timeout=20
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


needs_mounts = pytest.mark.skipif(
    not _unshare_works(),
    reason="needs `unshare -rm` (a private mount namespace) to mount a tiny tmpfs / a read-only bind mount",
)

# Runs train.py in a private mount namespace (it vanishes with the process: nothing to clean up).
IN_NAMESPACE = r"""
import os, shutil, subprocess, sys
kind, src, run, out, *argv = sys.argv[1:]
if kind == "full":
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", run], check=True)
    shutil.copytree(src, run, dirs_exist_ok=True)
    st = os.statvfs(run)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    room = os.path.getsize(os.path.join(run, "last.pth")) // 2  # a new last.pth no longer fits beside the old
    subprocess.run(["mount", "-o", f"remount,size={used + room}", "tmpfs", run], check=True)
else:
    shutil.copytree(src, run, dirs_exist_ok=True)
    subprocess.run(["mount", "--bind", run, run], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", run], check=True)
rc = subprocess.run([sys.executable, "train.py", *argv, f"train.run_dir={run}"]).returncode
shutil.copytree(run, out)
sys.exit(rc)
"""


KINDS = ("full", "read-only")


def background_steps(request, folder: Path, tests: set[str]) -> dict[str, str]:
    """train.py resuming the shared run's epoch 1 on each real file system, in the session's
    background launches: a tmpfs with room for half a checkpoint (ENOSPC), a read-only bind mount (EROFS)."""
    if "test_full_or_read_only_file_system" not in tests:
        return {}
    if not _unshare_works():
        return {}
    tiny_run = request.getfixturevalue("tiny_run")
    steps = {}
    for kind in KINDS:
        run, out = folder / kind / "run", folder / kind / "after"
        run.mkdir(parents=True)
        argv = ["unshare", "-rm", sys.executable, "-c", IN_NAMESPACE, kind, str(tiny_run.one_epoch), str(run), str(out)]
        steps[f"disk_{kind}"] = shlex.join([*argv, *tiny_run.args, "train.epochs=2"])
    return steps


@needs_mounts
@pytest.mark.parametrize("kind", KINDS)
def test_full_or_read_only_file_system(background, one_epoch_run, kind):
    """Real file systems: a tmpfs with room for half a checkpoint (ENOSPC), a read-only bind mount (EROFS)."""
    (code,), printed = background.result(f"disk_{kind}")
    run, out = background.folder / kind / "run", background.folder / kind / "after"
    assert code != 0 and "Traceback" not in printed, printed[-3000:]
    expected = "No space left on device" if kind == "full" else "Read-only file system"
    errors = [line for line in printed.splitlines() if expected in line]
    assert len(errors) == 1 and str(run) in errors[0], printed[-3000:]
    assert (out / "last.pth").read_bytes() == (one_epoch_run / "last.pth").read_bytes()
    assert checked_state(out) == (1, STEPS_PER_EPOCH) and not temps(out)
    if kind == "full":  # it trained epoch 2 and failed when saving it
        assert "epoch 2 step 4" in printed and "cannot write checkpoint" in errors[0]


def test_kernel_enospc_through_save_checkpoint(tmp_path, monkeypatch):
    """/dev/full: the kernel's own ENOSPC on every write, through the real save_checkpoint."""
    import engine.checkpoint.files
    from engine.checkpoint import save_checkpoint

    target = tmp_path / "last.pth"
    save_checkpoint(target, {"model": {"w": torch.ones(3)}, "epoch": 1})
    monkeypatch.setattr(
        engine.checkpoint.files, "open", lambda path, mode="r", *a, **k: open("/dev/full", mode, *a, **k), raising=False
    )
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(target, {"model": {"w": torch.zeros(100_000)}, "epoch": 2})
    assert "No space left on device" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.undo()
    assert load_checkpoint(target)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pth"]
