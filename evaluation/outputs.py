"""Everything a scoring run writes: results.json per run, the comparison table (printed, .md,
.csv), the PR / F-measure curves and report.html."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .curves import plot_curves
from .metrics import CODMetrics
from .names import metrics_for
from .report import gallery_rows, write_report
from .scoring import ImageResult
from .tables import format_table, write_results_json, write_tables

log = logging.getLogger("test")

Scored = dict[str, dict[str, tuple[CODMetrics, list[ImageResult]]]]  # {run: {benchmark: (metrics, per image)}}


def selected(results: dict, benchmark: str, metrics: list[str] | None) -> dict:
    """``results`` cut to the metrics chosen for ``benchmark`` (:func:`evaluation.names.metrics_for`)."""
    keep = set(metrics_for(benchmark, metrics)) | {"n_images"}
    return {k: v for k, v in results.items() if k in keep}


def write_outputs(
    scored: Scored,
    out: Path,
    images: dict[str, dict[str, str]],
    report: bool = True,
    extra: dict | None = None,
    metrics: list[str] | None = None,
    details: dict[str, dict] | None = None,
) -> None:
    """results.json per run, the comparison table (printed, .md, .csv), the curves and report.html.

    ``images``: ``{benchmark: {name: photo path}}`` for the report's gallery; ``extra``: keys added
    to every results.json entry (the test-time augmentation used); ``metrics``: ``test.py --metrics``
    (None: each benchmark's default set); ``details``: keys added to one benchmark's results.json entry
    (a video benchmark's protocol and per-sequence rows, :func:`evaluation.video.score_videos`).
    """
    out.mkdir(parents=True, exist_ok=True)
    runs = {
        run: {b: selected(m.results(), b, metrics) for b, (m, _) in per_run.items()} for run, per_run in scored.items()
    }
    for run, results in runs.items():
        run_dir = out if len(runs) == 1 else out / run
        run_dir.mkdir(parents=True, exist_ok=True)
        per_bench = {
            b: {**d, "sequences": {q: selected(r, b, metrics) for q, r in d.get("sequences", {}).items()}}
            for b, d in (details or {}).items()
        }
        write_results_json(results, run_dir / "results.json", extra, per_bench)
    md, csv_path = write_tables(runs, out)
    figures = plot_curves(
        {run: {b: m.curves() for b, (m, _) in per_run.items()} for run, per_run in scored.items()}, out / "curves"
    )
    print(format_table(runs))
    log.info(
        "wrote %s, %s and %s in %s; %d curve plot(s) in %s",
        "results.json" if len(runs) == 1 else "<run>/results.json",
        md.name,
        csv_path.name,
        out,
        len(figures),
        out / "curves",
    )
    if report:
        per_image = {run: {b: rows for b, (_, rows) in per_run.items()} for run, per_run in scored.items()}
        page = write_report(out, runs, figures, gallery_rows(per_image, images), title=f"COD results: {out.name}")
        log.info("wrote %s (open it in a browser; the gallery sorts by per-image score)", page)


def run_names(folders: list[Path]) -> dict[str, Path]:
    """A distinct, file-system-safe name per --preds folder (its name; its parent's too if needed)."""
    names: dict[str, Path] = {}
    for folder in folders:
        resolved = folder.resolve()
        base = re.sub(r"[^\w.+-]", "_", resolved.name or "maps")
        name = base if base not in names else re.sub(r"[^\w.+-]", "_", f"{resolved.parent.name}_{base}")
        i = 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names[name] = folder
    return names


def default_out(ckpt: Path, kind: str, name: str) -> Path:
    """``<run folder>/<kind>/<name>`` for a checkpoint in train.py's run folder (it holds the
    run's config.yaml), else ``outputs/<kind>/<name>`` (git-ignored): never a folder beside the code."""
    base = ckpt.parent if (ckpt.parent / "config.yaml").is_file() else Path("outputs")
    return base / kind / name
