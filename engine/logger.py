"""Run outputs for humans: ``train.log``, TensorBoard under ``tb/`` and tqdm bars, rank 0 only.

(Named ``logger`` rather than ``logging`` so it never shadows the standard library module.)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from tqdm import tqdm

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _TqdmHandler(logging.StreamHandler):
    """Prints through tqdm so log lines do not tear the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never crash training
            self.handleError(record)


def setup_logging(run_dir: Path | None, is_main: bool) -> None:
    """Console (and ``<run_dir>/train.log``, appended across resumes) on rank 0; warnings only elsewhere."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_e2net", False):
            root.removeHandler(h)
            h.close()
    handlers: list[logging.Handler] = [_TqdmHandler()]
    if is_main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log", encoding="utf-8"))
    for h in handlers:
        h.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        h._e2net = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.INFO if is_main else logging.WARNING)


class RunWriter:
    """TensorBoard scalars/images and progress bars that exist only on the main process."""

    def __init__(self, run_dir: Path, enabled: bool, purge_step: int | None = None) -> None:
        self.enabled = enabled
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after its last checkpoint.
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """``image``: float [3, H, W] in [0, 1]."""
        if self.tb is not None:
            self.tb.add_image(tag, image.clamp(0, 1), step)

    def bar(self, iterable: Iterable, **kwargs) -> tqdm:
        return tqdm(iterable, disable=not self.enabled, dynamic_ncols=True, leave=False, **kwargs)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
