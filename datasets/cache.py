"""``data.cache``: training images decoded once and stored pre-resized, so workers decode less.

Each training pair whose short side exceeds the target (``max training size x
max(1.25, 1/sqrt(data.scale[0]))``: the smallest random crop is still not upsampled) is stored
as a JPEG (quality 95) and a 1-bit PNG mask at that short side, under
``data.cache_dir`` (default ``<data.root>/.cache``). An entry's name hashes the source paths,
sizes and modification times, so edited files are re-cached; files are written to a temporary
name then renamed, so concurrent ranks and interrupted runs never leave half-written entries.
Validation and test data always use the original files (metrics at full resolution).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2

from .dataset import Sample
from .problems import BadFile, DatasetError, Problem, format_problems
from .reading import decode_image, decode_mask

log = logging.getLogger(__name__)


def cache_target(d) -> int:
    """Short side of cached images for the ``data`` config section ``d``."""
    largest = max([int(d.image_size), *[int(s) for s in d.multi_scale]])
    return math.ceil(largest * max(1.25, 1 / math.sqrt(float(d.scale[0]))))


def _entry_name(s: Sample, target: int) -> str:
    parts = [target]
    for p in (s.image_path, s.mask_path):
        st = os.stat(p)
        parts += [os.path.abspath(p), st.st_size, st.st_mtime_ns]
    return f"{s.name}_{hashlib.sha1(repr(parts).encode()).hexdigest()[:16]}"


def _write_atomic(path: Path, image, params: list[int]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), image, params):
        raise OSError(f"cannot write {tmp}")
    os.replace(tmp, path)


def _cache_one(s: Sample, target: int, folder: Path) -> Sample:
    if min(s.height, s.width) <= target:
        return s  # already small: nothing to gain
    stem = _entry_name(s, target)
    img_path, mask_path = folder / f"{stem}.jpg", folder / f"{stem}.png"
    k = target / min(s.height, s.width)
    h, w = max(1, round(s.height * k)), max(1, round(s.width * k))
    if not (img_path.exists() and mask_path.exists()):
        image = decode_image(s.image_path)
        mask = decode_mask(s.mask_path)
        if mask.shape != image.shape[:2]:
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        _write_atomic(mask_path, mask, [cv2.IMWRITE_PNG_BILEVEL, 1])
        _write_atomic(img_path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return replace(
        s, image_path=str(img_path), mask_path=str(mask_path), height=h, width=w, mask_height=h, mask_width=w
    )


def cache_samples(samples: list[Sample], d) -> list[Sample]:
    """The same samples, pointing at pre-resized copies (made now if missing)."""
    target = cache_target(d)
    folder = Path(d.cache_dir or Path(d.root) / ".cache") / f"train_{target}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(
            f"data.cache: cannot create {folder} ({err.strerror}); "
            "set data.cache_dir to a writable folder or data.cache=false"
        ) from None
    t0 = time.perf_counter()

    def work(s: Sample) -> Sample | Problem:
        try:
            return _cache_one(s, target, folder)
        except (BadFile, cv2.error) as err:
            return Problem(s.image_path, f"{err} (skipped)")
        except OSError as err:
            raise DatasetError(
                f"data.cache: cannot write in {folder} ({err}); "
                "set data.cache_dir to a writable folder or data.cache=false"
            ) from None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # OpenCV drops the GIL
        results = list(pool.map(work, samples))
    kept = [r for r in results if isinstance(r, Sample)]
    failed = [r for r in results if isinstance(r, Problem)]
    if failed:
        log.warning("data.cache: %d image(s) failed to decode while caching:\n%s", len(failed), format_problems(failed))
    log.info(
        "data.cache: %d training images at short side <= %d in %s (%.1f s)",
        len(kept),
        target,
        folder,
        time.perf_counter() - t0,
    )
    return kept
