"""Checkpoints that survive a crash mid-write and can never execute code when read.

Writing goes to a temporary file in the destination folder, is flushed to disk, then
``os.replace``d over the old file: a reader sees the previous checkpoint or the new one,
never half of one. Reading uses ``torch.load(weights_only=True)``, which only rebuilds
tensors and plain containers (dict, list, tuple, str, int, float, bool, None), so a file
crafted to run code when unpickled is refused instead of executed, and the CRC-32 of every record
of the archive is checked first, so damaged weights are an error rather than wrong numbers.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from config import first_line


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message is one line naming the file."""


def library_versions() -> dict[str, str]:
    """Versions worth knowing when a checkpoint misbehaves later (plain strings for weights_only)."""
    import numpy
    import torchvision
    import transformers

    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "transformers": str(transformers.__version__),
        "numpy": str(numpy.__version__),
        "cuda": str(torch.version.cuda),
    }


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically.

    On any failure (disk full, read-only folder) the previous file at ``path`` is left as it
    was, the temporary file is removed and :class:`CheckpointError` says what went wrong.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"  # same folder: os.replace stays atomic
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)  # make the rename itself durable
    except (OSError, RuntimeError) as err:
        os_error = _os_error(err)
        if os_error is None:  # not the disk's fault (e.g. an object torch cannot save): a bug, show it all
            raise
        raise write_error(path, "checkpoint", os_error) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def write_error(path: Path, what: str, err: OSError) -> CheckpointError:
    """The one line for a failed write of a run's output (checkpoint, TensorBoard events)."""
    folder = path.parent if path.suffix else path
    return CheckpointError(
        f"cannot write {what} '{path}': {err.strerror or err} (check free disk space and write permission "
        f"of '{folder}'; checkpoints already saved are untouched)"
    )


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", required: Iterable[str] = ("model",)
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without ever executing code.

    Returns the state dict. Raises :class:`CheckpointError` (one line naming the file) when the
    file is missing, truncated, corrupt, holds non-plain Python objects, or lacks a key of
    ``required``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found (check the path, e.g. <run_dir>/best.pth)")
    damaged = _damaged_record(path)
    if damaged:
        raise CheckpointError(
            f"checkpoint '{path}' is corrupt ({damaged}); it cannot be used - "
            f"take another checkpoint (e.g. the run's best.pth) or train again"
        )
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols of hostile files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if unsafe:
            # The file asks to import and call something: exactly what weights_only exists to stop.
            raise CheckpointError(
                f"refusing to load checkpoint '{path}': it asks to build Python objects other than tensors "
                f"and plain containers ({', '.join(unsafe[:5])}); a checkpoint must never run code, so it is not "
                f"unpickled - use a checkpoint written by train.py"
            ) from None
        raise CheckpointError(
            f"checkpoint '{path}' is corrupt or not a PyTorch checkpoint ({first_line(err, with_type=True)})"
        ) from None
    except (
        RuntimeError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
        OSError,
        IndexError,
        KeyError,
        TypeError,
        AttributeError,
        MemoryError,
    ) as err:
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt ({first_line(err, with_type=True)}); it cannot be used - "
            f"take another checkpoint (e.g. the run's best.pth) or train again"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(state).__name__}, not a checkpoint dict")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint '{path}' lacks {', '.join(repr(k) for k in missing)} "
            f"(has: {', '.join(map(str, state)) or 'nothing'}); train.py writes everything to last.pth, "
            f"the weights only to best.pth"
        )
    return state


def _damaged_record(path: Path) -> str | None:
    """torch.save writes a zip archive with a CRC-32 per record, which torch.load never checks:
    verify them, so a flipped bit in the weights is an error instead of silently wrong numbers."""
    try:
        if not zipfile.is_zipfile(path):
            return None  # truncated, legacy or not a checkpoint: torch.load's own checks report it
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable archive'}"
    return f"checksum mismatch in record '{bad}'" if bad else None


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err``: torch's zip writer reports a failed write as a RuntimeError
    raised while it closes, with the real cause (e.g. ENOSPC) only in the exception context."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def _unsafe_globals(path: Path) -> list[str]:
    """The functions/classes a refused file names: torch's own scan for its zip format, the pickle's
    GLOBAL opcodes for a bare pickle ([] when it is not a readable pickle at all)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, OSError, zipfile.BadZipFile):
        pass
    found, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except (ValueError, EOFError, OSError, pickle.UnpicklingError):
        pass
    return [g for g in found if not g.startswith(("torch.", "collections.OrderedDict"))]


def _remove_stale_temps(path: Path) -> None:
    """Temp files left by a writer killed mid-save (only rank 0 ever writes, so none is live)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) do not open folders; the data is synced anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
