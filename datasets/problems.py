"""Bad data is collected while a dataset is built and reported once, not found mid-epoch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """The data cannot be used as configured (missing folders, no usable images, strict mode)."""


class BadFile(ValueError):
    """One file cannot be used; the message says why (raised by the readers)."""


@dataclass(frozen=True)
class Problem:
    """A file (or folder) that was skipped, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def format_problems(problems: list[Problem], limit: int | None = None) -> str:
    shown = problems if limit is None else problems[:limit]
    lines = [f"  - {p}" for p in shown]
    if len(shown) < len(problems):
        lines.append(f"  ... and {len(problems) - len(shown)} more")
    return "\n".join(lines)


def report(problems: list[Problem], notes: list[Problem], strict: bool, what: str) -> None:
    """Log every skipped file and every note in one summary; with ``strict`` raise instead.

    ``notes`` are usable-but-odd files (e.g. a mask whose size differs from its image): they are
    logged, never fatal.
    """
    if notes:
        log.warning("%s: %d note(s):\n%s", what, len(notes), format_problems(notes))
    if not problems:
        return
    if strict:
        raise DatasetError(
            f"{what}: {len(problems)} problem(s) found and data.strict=true:\n{format_problems(problems)}\n"
            "Fix or remove these files, or set data.strict=false to skip them "
            "(python scripts/check_dataset.py ROOT lists them all)."
        )
    log.warning("%s: %d problem(s), skipped:\n%s", what, len(problems), format_problems(problems))
