"""The run folder: one writer at a time, and ``train.log``.

``<run_dir>/train.lock`` holds the owner's PID and host.

The lock is an ``flock`` on that file, which the kernel drops when its owner dies however it dies
(SIGKILL included), so a lock left by a dead process is simply taken over (with a warning naming
it); the PID and host in the file are there for the messages.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from config import ConfigError
from engine.distributed import DistEnv, all_gather_objects
from engine.logger import setup_logging

log = logging.getLogger("train")


class RunLockedError(RuntimeError):
    """Another live process is writing to the run folder."""


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "train.lock"
        self.fd: int | None = None
        self.unsupported = False

    def acquire(self) -> str:
        """Take the lock or raise :class:`RunLockedError`; returns the previous (dead) owner, or ""."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read(fd) or "another process"
                os.close(fd)
                raise RunLockedError(
                    f"run folder '{self.path.parent}' is in use by another train.py ({owner}); wait for it to "
                    f"finish or stop it, or give this run another train.run_dir"
                ) from None
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                self.unsupported = True  # no locks on this file system (some network mounts): run unguarded
                break
            # The owner may have released and removed the file between our open and flock: retry.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = "" if self.unsupported else _read(fd)
        stamp = f"PID {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
        self.fd = fd
        return previous

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it: a waiting opener retries
        os.close(self.fd)
        self.fd = None


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace").strip()


def open_run_dir(run_dir: Path, env: DistEnv, lock: RunLock) -> None:
    """Take the run folder's lock and start train.log (rank 0); config.yaml follows once train.amp is
    resolved.

    Every rank learns whether rank 0 succeeded, so all stop together when it did not; the error
    (:class:`ConfigError`) comes before anything is written.
    """
    error, stale = None, ""
    if env.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            stale = lock.acquire()
        except OSError as err:
            error = f"config key 'train.run_dir': cannot write to '{run_dir}' ({err})"
        except RunLockedError as err:
            error = str(err)
    error = all_gather_objects(error)[0]
    if error:
        raise ConfigError(error)
    try:
        setup_logging(run_dir, env.is_main)
    except OSError as err:
        raise ConfigError(f"config key 'train.run_dir': cannot write to '{run_dir}' ({err})") from None
    if lock.unsupported:
        log.warning("the file system of %s has no file locks: make sure no other train.py writes there", run_dir)
    if stale:
        log.warning("took over the lock of %s in %s: that process is no longer running", stale, run_dir)
