"""The errors a user can fix (a key, a path, a file, the disk): every entry point reports them as
one line (:func:`engine.cli.error_line`) and exits non-zero, never with a traceback."""

from __future__ import annotations

from config import ConfigError
from datasets import BadFile, DatasetError
from engine.checkpoint import CheckpointError
from evaluation.discovery import EvaluationError

# Missing weights are a FileNotFoundError, a missing optional package an ImportError, a diverged
# run a FloatingPointError.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    CheckpointError,
    DatasetError,
    BadFile,
    EvaluationError,
    FloatingPointError,
    FileNotFoundError,
    ImportError,
)
