"""Scoring folders of maps in a process pool, with results independent of the worker count.

Each worker reads one (map, mask) pair and returns its :class:`ImageScores`; the parent
adds them to a :class:`CODMetrics` in the pairs' order (sorted by mask file name), so the
float reductions happen in the same order whatever the number of workers.

Workers are forked from a clean "forkserver" process (``spawn`` where there is none, e.g.
Windows): unlike a plain ``fork`` of the parent, this is safe after inference has started
CUDA or OpenMP threads, and unlike ``spawn`` only the server imports PySODMetrics (~1-2 s,
once); each worker then starts in milliseconds. As with any
multiprocessing code, a script that calls this must guard its entry point with
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import cv2
from tqdm import tqdm

from cod_benchmarks import list_masks, select_benchmark_images, too_small

from .discovery import EvaluationError, one_map_per_image
from .maps import MapIssues, read_map, read_mask, read_photo
from .metrics import CODMetrics, ImageScores, image_scores

log = logging.getLogger(__name__)

Pair = tuple[str, str, str]  # (name, map path, mask path)
Task = tuple[Pair, str | None, bool]  # (the pair, its photo for the CCM or None, whether to compute HCE)


class ImageResult(NamedTuple):
    """One scored map, for per-image views (the HTML report's gallery)."""

    name: str
    map_path: str
    mask_path: str
    sm: float
    mae: float


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def pair_folder(pred_dir: str | Path, gt_dir: str | Path, benchmark: str) -> tuple[list[Pair], MapIssues]:
    """Match maps to masks by file stem. Returns the pairs (sorted by mask file name) and
    the missing / extra / excluded files by name. Two maps for one image raise
    :class:`EvaluationError`; of two masks for one image the preferred format is used, as
    in training (``cod_benchmarks.MASK_EXTS``)."""
    masks = {stem: files[0] for stem, files in list_masks(gt_dir).items()}
    maps = one_map_per_image(pred_dir)
    kept, excluded = select_benchmark_images(benchmark, list(masks))
    issues = MapIssues(excluded=[masks[n].name for n in excluded])
    issues.missing = [masks[n].name for n in kept if n not in maps]
    issues.extra = [p.name for n, p in maps.items() if n not in masks]
    pairs = [(n, str(maps[n]), str(masks[n])) for n in kept if n in maps]
    return pairs, issues


def _start_method() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])  # takes effect when the server starts
        return ctx
    return multiprocessing.get_context("spawn")


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one image per process: threads inside OpenCV would only contend


def _score_pair(task: Task) -> tuple[ImageScores | None, MapIssues]:
    (_, pred_path, gt_path), photo_path, hce = task
    issues = MapIssues()
    gt = read_mask(Path(gt_path))
    if gt is None:
        issues.unreadable.append(Path(gt_path).name)
        return None, issues
    reason = too_small(*gt.shape)
    if reason:
        issues.too_small.append(f"{Path(gt_path).name} ({gt.shape[0]}x{gt.shape[1]})")
        return None, issues
    pred = read_map(Path(pred_path), gt.shape, issues)
    if pred is None:
        return None, issues
    photo = None
    if photo_path is not None:
        photo = read_photo(Path(photo_path), gt.shape, issues)
        if photo is None:
            issues.no_photo.append(Path(gt_path).name)
    try:
        return image_scores(pred, gt, photo, hce), issues
    except ValueError as err:  # the range guard in image_scores
        issues.unscorable.append(f"{Path(gt_path).name} ({err})")
        return None, issues


class Scorer:
    """Scores lists of (map, mask) pairs; one process pool, started on first need and
    reused for every benchmark and run. Use as a context manager.

    ``workers``: processes; 0 = all cores available to this process; 1 = in this process.
    ``min_parallel``: lists shorter than this are scored in this process, since starting
    the pool (~1-2 s: each process imports PySODMetrics) costs more than they take. The
    numbers are the same either way.
    """

    def __init__(self, workers: int = 0, min_parallel: int = 32) -> None:
        if workers < 0:
            raise EvaluationError(f"--workers must be >= 0 (0 = all cores), got {workers}")
        self.workers = workers or available_cores()
        self.min_parallel = max(2, min_parallel)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def score(
        self, pairs: list[Pair], desc: str = "scoring", photos: dict[str, str] | None = None, hce: bool = False
    ) -> tuple[CODMetrics, MapIssues]:
        """Per-image work in the pool, combined here in the order of ``pairs``. ``photos``
        (``{name: photo path}``): compute the CCM too; ``hce``: the HCE too."""
        metrics, issues, _ = self.score_images(pairs, desc, photos, hce)
        return metrics, issues

    def score_images(
        self, pairs: list[Pair], desc: str = "scoring", photos: dict[str, str] | None = None, hce: bool = False
    ) -> tuple[CODMetrics, MapIssues, list[ImageResult]]:
        """:meth:`score`, plus each scored map's own S-measure and MAE (the values added to the metrics)."""
        tasks: list[Task] = [(p, None if photos is None else photos.get(p[0], ""), hce) for p in pairs]
        if self.workers <= 1 or len(pairs) < self.min_parallel:
            results = map(_score_pair, tasks)
        else:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=_start_method(), initializer=_init_worker)
            # Chunks amortise the inter-process round trips; ~8 chunks per worker keep the load balanced.
            chunk = max(1, min(16, len(pairs) // (8 * self.workers)))
            results = self._pool.map(_score_pair, tasks, chunksize=chunk)
        metrics, issues, per_image = CODMetrics(), MapIssues(), []
        bar = tqdm(results, total=len(pairs), desc=desc, unit="map", leave=False, disable=None)
        for pair, (scores, image_issues) in zip(pairs, bar, strict=True):
            issues.merge(image_issues)
            if scores is not None:
                metrics.add(scores)
                per_image.append(ImageResult(*pair, scores.sm, scores.mae))
        return metrics, issues, per_image


def log_issues(issues: MapIssues, where: str) -> None:
    for line in issues.messages():
        log.warning("%s: %s", where, line)


def score_benchmark(
    scorer: Scorer,
    pairs: list[Pair],
    issues: MapIssues,
    where: str,
    photos: dict[str, str] | None = None,
    chosen: Sequence[str] = (),
) -> tuple[CODMetrics, list[ImageResult]] | None:
    """Score one benchmark's pairs, log every problem found (by file name) under ``where``.
    Returns the metrics and the per-image results; None when no map could be scored.
    ``chosen``: the metrics to report (:func:`evaluation.names.metrics_for`); of them the costly
    ones are computed only when named: the CCM from ``photos`` (``{name: photo path}``), HCE."""
    if "CCM" in chosen and not photos:
        log.warning("%s: no photos (Imgs/ or im/ beside the masks), which the CCM reads: CCM not reported", where)
    photos = photos if "CCM" in chosen else None
    metrics, read_issues, per_image = scorer.score_images(pairs, where, photos or None, "HCE" in chosen)
    issues.merge(read_issues)
    log_issues(issues, where)
    if not len(metrics):
        log.warning("%s: no map could be paired with a mask and read, so there is nothing to score", where)
        return None
    return metrics, per_image


def score_folder(pred_dir: str | Path, gt_dir: str | Path, workers: int = 0, benchmark: str | None = None) -> dict:
    """Score every map in ``pred_dir`` against the same-named mask in ``gt_dir``.

    ``benchmark`` (default: the mask folder's parent folder name) selects the benchmark's
    images (COD10K: its camouflaged files only). Returns the metrics dict of :meth:`CODMetrics.results`.
    """
    benchmark = benchmark or Path(gt_dir).resolve().parent.name
    pairs, issues = pair_folder(pred_dir, gt_dir, benchmark)
    with Scorer(workers) as scorer:
        scored = score_benchmark(scorer, pairs, issues, benchmark)
    if scored is None:
        raise EvaluationError(
            f"{benchmark}: no map in '{pred_dir}' could be paired with a mask in '{gt_dir}' "
            "and read (maps must be named like the masks, e.g. GT/x.png <-> maps/x.png)"
        )
    return scored[0].results()
