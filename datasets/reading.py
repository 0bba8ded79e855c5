"""Reading image and mask files: a cheap validity probe for build time, decoders for load time.

Images come back as RGB uint8 (OpenCV decodes to BGR; the encoder is normalised for RGB), masks
as uint8 {0, 255} binarised at > 127 (the evaluators binarise the original mask files at > 128,
as PySODMetrics does). Grey, RGBA (alpha dropped) and palette files are converted by OpenCV's
IMREAD_COLOR / IMREAD_GRAYSCALE, the same decoders the COD evaluators use for ground truth, so
training and scoring decode the same grey values; 16-bit masks are read by their own range
(:func:`cod_benchmarks.mask_levels`), in training and scoring alike. EXIF orientation is ignored:
masks are annotated on the stored pixel grid (as PIL-based reference code reads them).

:func:`read_image` and :func:`read_mask` are how a file becomes pixels at load time, in every
mode: they re-read the header first, so ``data.max_pixels`` holds for a file swapped after the
build-time check, and decode at the largest reduction that keeps the short side at or above
what the transform needs (JPEG: in the DCT, several times faster).
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from cod_benchmarks import mask_levels, too_small

from .problems import BadFile

_TAIL = 1024  # bytes read from the end of a file to find its end marker
_REDUCED_COLOR = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_REDUCED_GREY = {  # IMREAD_ANYDEPTH keeps 16-bit masks 16-bit, so their own range can be read
    1: cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2 | cv2.IMREAD_ANYDEPTH,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4 | cv2.IMREAD_ANYDEPTH,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_ANYDEPTH,
}


@dataclass(frozen=True)
class ImageInfo:
    """What the file header declares (no pixel data decoded)."""

    height: int
    width: int
    format: str  # PIL's name: JPEG, PNG, BMP, ...
    mode: str  # PIL's mode: RGB, L, P, RGBA, I;16, ...


def probe(path: str | Path, max_pixels: int) -> ImageInfo:
    """Check a file without decoding its pixels (~0.1 ms); raise :class:`BadFile` saying why.

    Catches missing/unreadable/zero-byte files, non-images with an image extension, sizes over
    ``max_pixels`` (decompression bombs; the header is read before any pixel is decoded) and
    truncated JPEG/PNG files (their end marker is missing). Other formats are fully decoded,
    since they have no cheap end marker. Corruption inside a complete JPEG is only found by
    :func:`verify_decode` (``data.verify=true``, ``scripts/check_dataset.py``).
    """
    path = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadFile("cannot be read: missing or a broken link") from None
    except OSError as err:
        raise BadFile(f"cannot be read: {err.strerror or err}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadFile("not a regular file")
    if st.st_size == 0:
        raise BadFile("zero-byte file")
    with _header_errors(), open(path, "rb") as f:
        with Image.open(f) as im:
            width, height = im.size
            fmt, mode = im.format or "?", im.mode
        f.seek(max(0, st.st_size - _TAIL))
        tail = f.read()
    _check_size(height, width, max_pixels)
    if fmt in ("JPEG", "MPO", "PNG"):
        # Entropy-coded JPEG data never holds 0xFFD9 (0xFF is always stuffed), so a missing EOI in
        # the tail means the file was cut short (OpenCV would silently decode the rest as grey);
        # likewise a PNG's IEND. Files with data appended after the marker pass the full decode.
        marker, name = (b"IEND", "IEND chunk") if fmt == "PNG" else (b"\xff\xd9", "end-of-image marker")
        if marker not in tail:
            try:
                verify_decode(path)
            except BadFile:
                raise BadFile(f"truncated {fmt} (no {name})") from None
    else:
        try:
            decode_image(path)
        except BadFile as err:
            raise BadFile(f"{fmt} file: {err}") from None
    return ImageInfo(height, width, fmt, mode)


@contextmanager
def _header_errors() -> Iterator[None]:
    """Reading a header: PIL's errors (and its bomb warning) become one :class:`BadFile` saying why."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except Image.DecompressionBombError as err:
        raise BadFile(f"decompression bomb ({err}); raise data.max_pixels only if you trust it") from None
    except FileNotFoundError:
        raise BadFile("cannot be read: missing or a broken link") from None
    except UnidentifiedImageError:
        raise BadFile("not an image (contents are not a known image format)") from None
    except OSError as err:
        raise BadFile(f"cannot be read: {err.strerror or err}") from None
    except Exception as err:  # PIL's header parsers raise assorted errors on garbage
        raise BadFile(f"unreadable image header ({type(err).__name__}: {err})") from None


def _check_size(height: int, width: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise BadFile(f"declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise BadFile(
            f"decompression bomb: declares {width}x{height} = {width * height:,} pixels "
            f"> data.max_pixels={max_pixels:,} (raise data.max_pixels only if you trust it)"
        )
    reason = too_small(height, width)
    if reason:
        raise BadFile(reason)


def header_size(path: str | Path, max_pixels: int) -> tuple[int, int]:
    """(H, W) as the file's header declares it, checked against ``max_pixels`` before any
    pixel is decoded; raise :class:`BadFile` saying why a file cannot be used."""
    with _header_errors(), Image.open(str(path)) as im:
        width, height = im.size
    _check_size(height, width, max_pixels)
    return height, width


def read_image(path: str | Path, max_pixels: int, needed_side: float = 0.0) -> np.ndarray:
    """RGB uint8 [h, w, 3]: the file decoded at the largest reduction (1, 2, 4, 8) whose short
    side stays >= ``needed_side`` (0: full size). Checks the header against ``max_pixels`` first."""
    height, width = header_size(path, max_pixels)
    return decode_image(path, reduction(height, width, needed_side))


def read_mask(path: str | Path, max_pixels: int, needed_side: float = 0.0, binarize: bool = True) -> np.ndarray:
    """uint8 {0, 255} [h, w]: like :func:`read_image`, for a mask (so a mask of its image's size
    is decoded at the image's reduction); ``binarize=False`` keeps its grey levels."""
    height, width = header_size(path, max_pixels)
    return decode_mask(path, reduction(height, width, needed_side), binarize)


def _read_bytes(path: str | Path) -> np.ndarray:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # also handles non-ASCII paths on Windows
    except OSError as err:
        raise BadFile(f"cannot be read: {err}") from None
    if data.size == 0:
        raise BadFile("zero-byte file")
    return data


def decode_image(path: str | Path, reduce: int = 1) -> np.ndarray:
    """RGB uint8 [H, W, 3]; ``reduce`` in (1, 2, 4, 8) decodes at 1/reduce size (JPEG: in the DCT)."""
    img = cv2.imdecode(_read_bytes(path), _REDUCED_COLOR[reduce] | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise BadFile("cannot be decoded as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)


def decode_mask(path: str | Path, reduce: int = 1, binarize: bool = True) -> np.ndarray:
    """uint8 [H, W] with values {0, 255}: grey level > 127 (of 255; 16-bit files by their own
    range, see :func:`cod_benchmarks.mask_levels`) is object. ``binarize=False``: the grey levels."""
    grey = cv2.imdecode(_read_bytes(path), _REDUCED_GREY[reduce] | cv2.IMREAD_IGNORE_ORIENTATION)
    if grey is None:
        raise BadFile("cannot be decoded as an image")
    try:
        grey = mask_levels(grey)
    except ValueError as err:
        raise BadFile(f"mask {err}") from None
    return cv2.threshold(grey, 127, 255, cv2.THRESH_BINARY)[1] if binarize else grey


def reduction(height: int, width: int, needed: float) -> int:
    """Largest decode reduction (1, 2, 4, 8) that keeps both sides >= ``needed`` pixels.

    OpenCV's reduced decodes round sizes down for some formats, so the test is on whole pixels.
    ``needed`` <= 0 asks for the full size (1).
    """
    if needed <= 0:
        return 1
    r = 1
    while r < 8 and min(height, width) // (2 * r) >= math.ceil(needed):
        r *= 2
    return r


def verify_decode(path: str | Path) -> None:
    """Decode every pixel strictly (PIL raises on truncated or broken streams); raise BadFile."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(str(path)) as im:
                im.load()
    except Image.DecompressionBombError as err:
        raise BadFile(f"decompression bomb ({err})") from None
    except Exception as err:  # any decoder failure means the file is unusable
        raise BadFile(f"fails to decode ({type(err).__name__}: {err})") from None
