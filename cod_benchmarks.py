"""What the COD benchmarks are and which files they hold: the one place that says so.

Training, ``test.py --ckpt``, ``test.py --preds`` and ``--images`` all import these facts,
so they cannot disagree about which files exist or which of them a benchmark scores. The
module imports only numpy and the standard library: ``test.py``'s scoring worker processes
load it, and must start in milliseconds.

- Benchmarks: CAMO, CHAMELEON, COD10K, NC4K, in the column order of the papers.
- COD10K's benchmark is its 2,026 camouflaged test images, the files whose name holds
  ``-CAM-``; scoring the whole COD10K-v3 test folder (which also holds non-camouflaged
  images) gives numbers nobody can compare with.
- Files: one list of image extensions (photos), one of mask extensions (masks and
  prediction maps), matched case-insensitively; hidden files (macOS ``._x.png``) skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

BENCHMARKS = ("CAMO", "CHAMELEON", "COD10K", "NC4K")  # the papers' column order
CAMOUFLAGED_MARK = "-CAM-"  # in the file name of COD10K's camouflaged images

# What both decoders (PIL reads the header, OpenCV the pixels) handle in every build we ship.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
# The same formats; the order is the preference when one image has several mask files:
# lossless first, so a stale JPEG export never wins over the PNG.
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff", ".pgm", ".pnm", ".ppm", ".webp", ".jpg", ".jpeg")

# Images smaller than this on either side are not scored (and not trained on): the
# metrics' arithmetic breaks down there (a 1x1 image gives E-measure 4.5e15).
MIN_SIDE = 8


def sort_benchmarks(names: Iterable[str]) -> list[str]:
    """The four standard benchmarks in the papers' order (any case), then the others alphabetically."""
    rank = {b: i for i, b in enumerate(BENCHMARKS)}
    return sorted(names, key=lambda n: (rank.get(n.upper(), len(rank)), n.upper()))


def is_cod10k(benchmark: str) -> bool:
    return benchmark.upper().startswith("COD10K")


def is_camouflaged(file_name: str) -> bool:
    """COD10K's naming: its camouflaged images are the files with ``-CAM-`` in the name."""
    return CAMOUFLAGED_MARK in file_name


def select_benchmark_images(benchmark: str, names: list, key: Callable = str) -> tuple[list, list]:
    """Split file names (or items whose ``key(item)`` is the name) into (scored, excluded) by the
    benchmark's definition, for every mode.

    COD10K: only the camouflaged files are the benchmark. A COD10K folder without any such
    file does not use COD10K's naming (e.g. a generated set), so everything is kept.
    """
    if not is_cod10k(benchmark):
        return list(names), []
    cam = [n for n in names if is_camouflaged(key(n))]
    if not cam:
        return list(names), []
    return cam, [n for n in names if not is_camouflaged(key(n))]


def list_files(folder: str | Path, exts: tuple[str, ...]) -> dict[str, list[Path]]:
    """``{file stem: [files]}`` for the files directly in ``folder`` whose extension is in ``exts``
    (any case), stems in name order; a stem's files in the order of ``exts``. Hidden files skipped."""
    rank = {e: i for i, e in enumerate(exts)}
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(Path(folder).iterdir()):
        # not is_dir(): a broken link is listed, so that its reader reports it by name
        if p.suffix.lower() in rank and not p.name.startswith(".") and not p.is_dir():
            by_stem.setdefault(p.stem, []).append(p)
    for files in by_stem.values():
        files.sort(key=lambda p: (rank[p.suffix.lower()], p.name))
    return by_stem


def list_images(folder: str | Path) -> dict[str, list[Path]]:
    """Photos in ``folder`` by stem (see :func:`list_files`)."""
    return list_files(folder, IMAGE_EXTS)


def list_masks(folder: str | Path) -> dict[str, list[Path]]:
    """Masks or prediction maps in ``folder`` by stem, the preferred file first (see :data:`MASK_EXTS`)."""
    return list_files(folder, MASK_EXTS)


def mask_levels(raw: np.ndarray) -> np.ndarray:
    """Grey levels of a decoded mask or map on the 0..255 scale, uint8 [H, W].

    ``raw``: what OpenCV decodes with ``IMREAD_ANYDEPTH`` (grey, 8- or 16-bit). A 16-bit file
    is read by its own range: values up to 255 are already on the 8-bit scale (a 0/255 mask
    saved as 16 bits), larger ones keep their high byte, as ``cv2.IMREAD_GRAYSCALE`` does (so
    0/65535 becomes 0/255). Raises ValueError for other depths (float or 32-bit files).
    """
    if raw.dtype == np.uint8:
        return raw
    if raw.dtype != np.uint16:
        raise ValueError(f"holds {raw.dtype} values; save masks and maps as 8- or 16-bit images")
    if int(raw.max(initial=0)) <= 255:
        return raw.astype(np.uint8)
    return (raw >> 8).astype(np.uint8)


def too_small(height: int, width: int) -> str | None:
    """Why an image of this size cannot be scored, or None."""
    if min(height, width) < MIN_SIDE:
        return f"too small ({height}x{width}): images must be at least {MIN_SIDE}x{MIN_SIDE} pixels"
    return None
