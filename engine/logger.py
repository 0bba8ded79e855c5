"""Run outputs for humans: ``train.log``, TensorBoard under ``tb/`` and tqdm bars, rank 0 only.

(Named ``logger`` rather than ``logging`` so it never shadows the standard library module.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.utils import make_grid
from tqdm import tqdm

from engine.checkpoint import write_error
from engine.cli import LOG_FORMAT


def setup_logging(run_dir: Path | None, is_main: bool) -> None:
    """Console (and ``<run_dir>/train.log``, appended across resumes) on rank 0; warnings only elsewhere.

    Wrap the loop in ``tqdm.contrib.logging.logging_redirect_tqdm()`` so console lines do not tear
    the progress bars.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_e2net", False):
            root.removeHandler(h)
            h.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if is_main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(RunLogFile(run_dir / "train.log", encoding="utf-8"))
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        h._e2net = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.INFO if is_main else logging.WARNING)


class RunLogFile(logging.FileHandler):
    """``train.log``. A failed write (a full disk) stops the run with the one-line
    :class:`CheckpointError` a failed checkpoint save gives, raised from the logging call of the
    thread that set logging up; after that the file is left alone, so the error itself reaches the
    console instead of logging's "--- Logging error ---" traceback. An error record that cannot be
    written is already the report of a failure (e.g. that very checkpoint save): it is not replaced."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failed = False
        self._owner = (os.getpid(), threading.get_ident())

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            super().handleError(record)
        elif (os.getpid(), threading.get_ident()) == self._owner:  # elsewhere only the line is lost (console has it)
            self.failed = True
            if record.levelno < logging.ERROR:
                raise write_error(Path(self.baseFilename), "the run log", err) from None


# The one spelling of the command we print (train.py, make demo) and document (README). TensorBoard
# keeps 10 images per tag unless told otherwise, and images=0 no longer means "all" (TensorBoard 2.21
# serves none): 1000 keeps every grid of a run validated up to 1000 times, ten times the 100 epochs
# of the longest recipe at train.val_interval=1.
TENSORBOARD_COMMAND = "tensorboard --logdir {logdir} --samples_per_plugin images=1000"


def labelled_grid(tiles: torch.Tensor, labels: Sequence[str], padding: int = 2) -> torch.Tensor:
    """``tiles`` [rows, columns, 3, H, W] in [0, 1] -> one image [3, H', W'] with a header row
    naming each column (TensorBoard shows images without captions)."""
    rows, cols, _, h, w = tiles.shape
    if len(labels) != cols:
        raise ValueError(f"{len(labels)} labels for {cols} columns")
    grid = make_grid(tiles.flatten(0, 1).float().clamp(0, 1), nrow=cols, padding=padding, pad_value=1.0).cpu()
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    # One scale for every label: the widest must fit its column, and no taller than ~14 px.
    widest = max(cv2.getTextSize(text, font, 1.0, thickness)[0][0] for text in labels)
    scale = min(0.45, (w - 4) / max(widest, 1))
    text_h = cv2.getTextSize("Ag", font, scale, thickness)[0][1]
    header = np.full((text_h + 8, grid.shape[-1], 3), 255, np.uint8)
    for i, text in enumerate(labels):
        tw = cv2.getTextSize(text, font, scale, thickness)[0][0]
        x = padding + i * (w + padding) + max(0, (w - tw) // 2)
        cv2.putText(header, text, (x, text_h + 3), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return torch.cat([torch.from_numpy(header).permute(2, 0, 1).float() / 255, grid], dim=1)


class RunWriter:
    """TensorBoard scalars/images and progress bars that exist only on the main process.

    A failed event write (its background thread re-raises the ``OSError``, e.g. a full disk) stops
    the run with the same one-line :class:`CheckpointError` a failed checkpoint save gives.
    """

    def __init__(self, run_dir: Path, enabled: bool, purge_step: int | None = None) -> None:
        self.enabled = enabled
        self.tb = None
        self.folder = run_dir / "tb" if run_dir is not None else None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_writer_thread_errors()
            # purge_step drops events a killed run wrote after its last checkpoint.
            with self._writing():
                self.tb = SummaryWriter(str(self.folder), purge_step=purge_step)

    @contextlib.contextmanager
    def _writing(self):
        try:
            yield
        except OSError as err:
            raise write_error(self.folder, "TensorBoard events", err) from None

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self.tb is not None:
            with self._writing():
                for k, v in values.items():
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """``image``: float [3, H, W] in [0, 1]."""
        if self.tb is not None:
            with self._writing():
                self.tb.add_image(tag, image.clamp(0, 1), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Preformatted text (shown as a code block by TensorBoard's Markdown renderer)."""
        if self.tb is not None:
            with self._writing():
                self.tb.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

    def bar(self, iterable: Iterable, **kwargs) -> tqdm:
        return tqdm(iterable, disable=not self.enabled, dynamic_ncols=True, leave=False, **kwargs)

    def close(self) -> None:
        if self.tb is not None:
            tb, self.tb = self.tb, None
            with self._writing():
                tb.close()


def _quiet_writer_thread_errors() -> None:
    """TensorBoard's writer thread keeps its exception for the next ``add_*`` call (reported there as
    one line) and then lets it escape, so ``threading`` would print a traceback as well: drop that copy."""
    previous = threading.excepthook
    if getattr(previous, "e2net", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook.e2net = True  # type: ignore[attr-defined]
    threading.excepthook = hook
