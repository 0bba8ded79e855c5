"""What every entry point shares on its command line: ``--config`` with ``key=value`` overrides,
and the one-line message an error becomes. Light on purpose (no torch): test.py parses its
arguments, and its scoring processes start, without loading PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--config FILE`` and the positional ``key=value`` overrides."""
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(default) if default else None,
        help="YAML config" + (f" (default: {default})" if default else ""),
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.lr=2e-4 (every key: config_schema.py, README 'Config reference')",
    )


def error_line(err: BaseException) -> str:
    """The message of ``err``; for an error re-raised from a DataLoader worker, the original one
    (the worker's message carries its whole traceback)."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text
