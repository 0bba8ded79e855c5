"""What the benchmarks are and which files they hold: the one place that says so.

Training, ``test.py --ckpt``, ``test.py --preds`` and ``--images`` all import these facts,
so they cannot disagree about which files exist or which of them a benchmark scores. The
module imports only numpy and the standard library: ``test.py``'s scoring worker processes
load it, and must start in milliseconds.

- Benchmarks: CAMO, CHAMELEON, COD10K, NC4K, in the column order of the papers; and the
  registry (:data:`REGISTRY`) of every field the framework scores: COD, salient objects (SOD),
  dichotomous segmentation (DIS5K), polyps and video COD, with their published image counts and
  the folder names their downloads unpack to. The field decides the default metrics
  (``CCM`` on COD, ``HCE`` on DIS).
- COD10K's benchmark is its 2,026 camouflaged test images, the files whose name holds
  ``-CAM-``; scoring the whole COD10K-v3 test folder (which also holds non-camouflaged
  images) gives numbers nobody can compare with.
- Files: one list of image extensions (photos), one of mask extensions (masks and
  prediction maps), matched case-insensitively; hidden files (macOS ``._x.png``) skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCHMARKS = ("CAMO", "CHAMELEON", "COD10K", "NC4K")  # the papers' column order
CAMOUFLAGED_MARK = "-CAM-"  # in the file name of COD10K's camouflaged images

# What both decoders (PIL reads the header, OpenCV the pixels) handle in every build we ship.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
# The same formats; the order is the preference when one image has several mask files:
# lossless first, so a stale JPEG export never wins over the PNG.
MASK_EXTS = (".png", ".bmp", ".tif", ".tiff", ".pgm", ".pnm", ".ppm", ".webp", ".jpg", ".jpeg")

# Video clips (datasets/video.py, models/temporal.py): the target of a clip frame that has no mask, which
# the loss leaves out; and the anchor, the frame of a clip of T that it is centred on and scored as.
NO_MASK = -1.0


def clip_anchor(clip: int) -> int:
    return (clip - 1) // 2


# Images smaller than this on either side are not scored (and not trained on): the
# metrics' arithmetic breaks down there (a 1x1 image gives E-measure 4.5e15).
MIN_SIDE = 8


@dataclass(frozen=True)
class Benchmark:
    """One data set of the registry.

    ``n_images``: the published count of the images it scores (trains on, for ``split="train"``);
    None where we do not state one. ``n_sequences``: a video set's published count of sequences. ``image_dirs`` / ``mask_dirs``: the folder names its own
    download unpacks to, beside the generic ones the data package accepts (Imgs/GT, im/gt, ...).
    """

    name: str
    field: str  # "COD", "SOD", "DIS", "polyp", "video-COD"
    n_images: int | None
    split: str = "test"
    aliases: tuple[str, ...] = ()
    image_dirs: tuple[str, ...] = ()
    mask_dirs: tuple[str, ...] = ()
    n_sequences: int | None = None


COD, SOD, DIS, POLYP, VIDEO_COD = "COD", "SOD", "DIS", "polyp", "video-COD"
# The folder the DIS5K download unpacks to, holding DIS-TR, DIS-VD and DIS-TE1..4, each with im/ and gt/.
COLLECTIONS = ("DIS5K",)

REGISTRY = (
    Benchmark("CAMO", COD, 250),
    Benchmark("CHAMELEON", COD, 76),
    Benchmark("COD10K", COD, 2026),  # the -CAM- files of its test folder
    Benchmark("NC4K", COD, 4121),
    Benchmark("COD10K+CAMO train", COD, 4040, split="train"),
    Benchmark("DUTS-TE", SOD, 5019, image_dirs=("DUTS-TE-Image",), mask_dirs=("DUTS-TE-Mask",)),
    Benchmark(
        "DUT-OMRON", SOD, 5168, aliases=("DUT-O",), image_dirs=("DUT-OMRON-image",), mask_dirs=("pixelwiseGT-new-PNG",)
    ),
    Benchmark("HKU-IS", SOD, 4447),
    Benchmark("ECSSD", SOD, 1000),
    Benchmark("PASCAL-S", SOD, 850),
    Benchmark("DUTS-TR", SOD, 10553, split="train", image_dirs=("DUTS-TR-Image",), mask_dirs=("DUTS-TR-Mask",)),
    Benchmark("DIS-VD", DIS, 470),
    *(Benchmark(f"DIS-TE{i}", DIS, 500) for i in range(1, 5)),
    Benchmark("DIS-TR", DIS, 3000, split="train"),
    Benchmark("Kvasir", POLYP, 100, aliases=("Kvasir-SEG",)),
    Benchmark("CVC-ClinicDB", POLYP, 62),
    Benchmark("CVC-ColonDB", POLYP, 380),
    Benchmark("ETIS-LaribPolypDB", POLYP, 196, aliases=("ETIS",)),
    Benchmark("CVC-300", POLYP, 60, aliases=("EndoScene",)),
    Benchmark("Kvasir+ClinicDB train", POLYP, 1450, split="train"),  # PraNet's training set
    # Video sets, counted in sequences (datasets/video.py reads their layouts). MoCA-Mask: 87 of MoCA's
    # videos with masks, 71 to train on and 16 to test (SLT-Net's per-sequence results list the 16);
    # CAD: 9 sequences, all for testing. Frame counts differ between the releases in use: not stated.
    Benchmark("MoCA-Mask", VIDEO_COD, None, aliases=("MoCA-Mask-TE", "TestDataset_per_sq"), n_sequences=16),
    Benchmark("MoCA-Mask train", VIDEO_COD, None, split="train", aliases=("TrainDataset_per_sq",), n_sequences=71),
    Benchmark("CAD", VIDEO_COD, None, aliases=("CamouflagedAnimalDataset", "CAD2016"), n_sequences=9),
)


def _key(name: str) -> str:
    # DUT-OMRON, DUT_OMRON, dut omron and DUTOMRON are one benchmark
    return re.sub(r"[^0-9A-Z+]", "", name.upper())


_BY_KEY = {_key(n): b for b in REGISTRY for n in (b.name, *b.aliases)}


def benchmark_info(name: str) -> Benchmark | None:
    """The registry's entry for a benchmark folder name (any case, ``-``/``_`` ignored), or None."""
    return _BY_KEY.get(_key(name))


def field_of(name: str) -> str | None:
    """The field a benchmark belongs to (``"COD"``, ``"DIS"``, ...), None for a name not registered."""
    info = benchmark_info(name)
    return info.field if info else None


def is_training_set(name: str) -> bool:
    info = benchmark_info(name)
    return info is not None and info.split == "train"


def sort_benchmarks(names: Iterable[str]) -> list[str]:
    """The four COD benchmarks in the papers' order (any case), then the other registered test
    sets in the registry's order, then the others alphabetically."""
    rank = {b: i for i, b in enumerate(BENCHMARKS)}
    registered = {_key(b.name): len(rank) + i for i, b in enumerate(REGISTRY) if b.name not in rank}
    last = len(rank) + len(REGISTRY)

    def order(n: str) -> tuple[int, str]:
        info = benchmark_info(n)
        r = rank.get(n.upper(), registered.get(_key(info.name), last) if info else last)
        return r, n.upper()

    return sorted(names, key=order)


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
