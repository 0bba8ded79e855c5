"""``report.html``: the results table, the curves and a per-image gallery, readable offline from disk.

The page is one HTML file with its CSS and JavaScript inline (no server, no CDN): the gallery's
rows are embedded as JSON, since browsers refuse to ``fetch`` files next to a page opened from
disk. Images are small thumbnails under ``report/`` beside it (JPEG for photos, PNG for masks and
maps), written once: a thumbnail newer than its source is kept on the next run. Per-image
S-measure and MAE are the values the scoring path computed for the table (:class:`ImageResult`).
"""

from __future__ import annotations

import html
import json
import logging
import re
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cod_benchmarks import VIDEO_COD, field_of

from .discovery import sort_benchmarks
from .maps import read_mask
from .names import LOWER_IS_BETTER, ordered_keys
from .scoring import ImageResult, available_cores
from .tables import LEGEND

log = logging.getLogger(__name__)

THUMB_SIDE = 176  # px, longest side: four or more per row on a laptop screen
TEMPLATE = Path(__file__).with_name("report_template.html")


@dataclass
class GalleryRow:
    """One benchmark image: its photo (None when the benchmark folder holds masks only), its mask
    and every run's ``ImageResult`` for it."""

    bench: str
    name: str
    image: str | None
    mask: str
    maps: dict[str, ImageResult] = field(default_factory=dict)


def gallery_rows(
    per_image: Mapping[str, Mapping[str, list[ImageResult]]], images: Mapping[str, Mapping[str, str]]
) -> list[GalleryRow]:
    """``per_image``: ``{run: {benchmark: [ImageResult]}}``; ``images``: ``{benchmark: {name: photo path}}``.
    One row per (benchmark, image) scored by any run, in the papers' benchmark order then by name; a video
    benchmark's frames (``<sequence>/<frame>``) are grouped as ``<benchmark>/<sequence>``, one gallery each."""
    rows: dict[tuple[str, str], GalleryRow] = {}
    for run, per_bench in per_image.items():
        for bench, results in per_bench.items():
            for r in results:
                group, name = bench, r.name
                if field_of(bench) == VIDEO_COD and "/" in name:  # a video benchmark: a gallery per sequence
                    sequence, name = name.split("/", 1)
                    group = f"{bench}/{sequence}"
                photo = images.get(bench, {}).get(r.name)
                row = rows.setdefault((group, name), GalleryRow(group, name, photo, r.mask_path))
                row.maps[run] = r
    order = {b: i for i, b in enumerate(sort_benchmarks({b for b, _ in rows}))}
    return [rows[k] for k in sorted(rows, key=lambda k: (order[k[0]], k[1]))]


def _slug(text: str) -> str:
    return re.sub(r"[^\w.+-]", "_", text) or "_"


def _thumbnail(src: str, dst: Path, side: int) -> None:
    """Write ``dst`` unless it is already newer than ``src``. Photos (``.jpg`` thumbnails) decode at
    reduced size after their header passed PIL's decompression-bomb limit; masks and maps (``.png``)
    are read as the scorer reads them (``evaluation.maps.read_mask``: colour to grey, 16-bit by its own
    range), so the thumbnail shows what was scored. Raises ``ValueError`` (a bomb, a non-image) or ``OSError``."""
    if dst.is_file() and dst.stat().st_mtime >= Path(src).stat().st_mtime:
        return
    if dst.suffix == ".jpg":
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # the header alone says so
            try:
                with Image.open(src) as im:
                    im.draft("RGB", (side, side))  # JPEG: DCT scaling, never below ``side``
                    im = im.convert("RGB")
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
                raise ValueError(f"{Path(src).name}: decompression bomb ({err})") from None
        im.thumbnail((side, side), Image.Resampling.BILINEAR)
    else:
        grey = read_mask(Path(src))  # the scorer's reader
        if grey is None:
            raise ValueError("not readable as an image")
        im = Image.fromarray(grey)
        im.thumbnail((side, side), Image.Resampling.BILINEAR)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    im.save(tmp, format="JPEG" if dst.suffix == ".jpg" else "PNG", quality=82)
    tmp.replace(dst)


def _safe_thumbnail(job: tuple[str, Path, int]) -> str | None:
    try:
        _thumbnail(*job)
        return None
    except (OSError, ValueError) as err:  # a damaged file shows as a missing picture, not a failed report
        return f"{job[0]}: {err}"


def _results_table(runs: Mapping[str, Mapping[str, dict]]) -> str:
    benches = sort_benchmarks({b for res in runs.values() for b in res})
    keys = ordered_keys({k: None for res in runs.values() for r in res.values() for k in r})
    head1 = "".join(f'<th colspan="{len(keys)}">{html.escape(b)} (n={_n(runs, b)})</th>' for b in benches)
    arrows = "".join(f"<th>{k} {'&darr;' if k in LOWER_IS_BETTER else '&uarr;'}</th>" for _ in benches for k in keys)
    body = []
    for run, res in runs.items():
        cells = [f'<th class="run">{html.escape(run)}</th>']
        for b in benches:
            for k in keys:
                if k not in res.get(b, {}):
                    cells.append("<td>-</td>")
                    continue
                values = [r[b][k] for r in runs.values() if k in r.get(b, {})]
                best = (min if k in LOWER_IS_BETTER else max)(values)
                bold = len(values) > 1 and res[b][k] == best
                cells.append(f"<td{' class=best' if bold else ''}>{res[b][k]:.3f}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="results"><thead><tr><th rowspan="2">Method</th>{head1}</tr><tr>{arrows}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _n(runs: Mapping[str, Mapping[str, dict]], bench: str) -> str:
    counts = {res[bench]["n_images"] for res in runs.values() if bench in res}
    return str(counts.pop()) if len(counts) == 1 else "differs"


def write_report(
    out: str | Path,
    runs: Mapping[str, Mapping[str, dict]],
    curve_files: list[Path],
    rows: list[GalleryRow],
    title: str = "COD results",
    side: int = THUMB_SIDE,
    workers: int = 0,
) -> Path:
    """Write ``out/report.html`` and its thumbnails under ``out/report/``; returns the page's path.

    ``runs``: ``{run: {benchmark: results.json entry}}`` (the table); ``curve_files``: PNGs to show,
    linked relative to ``out``; ``rows``: the gallery (:func:`gallery_rows`).
    """
    out = Path(out)
    thumbs = out / "report"
    run_names = list(runs)
    run_dirs = {run: f"m{i}_{_slug(run)}" for i, run in enumerate(run_names)}
    jobs: list[tuple[str, Path, int]] = []
    data_rows = []
    for row in rows:
        base = thumbs / _slug(row.bench)
        entry: dict = {"b": row.bench, "n": row.name, "m": {}}
        if row.image:
            entry["i"] = (base / "image" / f"{_slug(row.name)}.jpg").relative_to(out).as_posix()
            jobs.append((row.image, out / entry["i"], side))
        entry["g"] = (base / "gt" / f"{_slug(row.name)}.png").relative_to(out).as_posix()
        jobs.append((row.mask, out / entry["g"], side))
        for run, r in row.maps.items():
            rel = (base / run_dirs[run] / f"{_slug(row.name)}.png").relative_to(out).as_posix()
            jobs.append((r.map_path, out / rel, side))
            entry["m"][str(run_names.index(run))] = [rel, round(r.sm, 4), round(r.mae, 4)]
        data_rows.append(entry)
    # Decoding releases the GIL: threads suffice, and avoid pickling paths to processes.
    with ThreadPoolExecutor(workers or min(8, available_cores())) as pool:
        failed = [msg for msg in pool.map(_safe_thumbnail, jobs) if msg]
    data = {"runs": run_names, "benches": sort_benchmarks({r.bench for r in rows}), "rows": data_rows}
    curves = "".join(
        f'<figure><img src="{html.escape(Path(p).relative_to(out).as_posix())}" alt="{html.escape(Path(p).stem)} '
        f'curves"><figcaption>{html.escape(Path(p).stem)}</figcaption></figure>'
        for p in curve_files
    )
    page = (
        TEMPLATE.read_text(encoding="utf-8")
        .replace("{{TITLE}}", html.escape(title))
        .replace("{{TABLE}}", _results_table(runs))
        .replace("{{LEGEND}}", html.escape(LEGEND))
        .replace("{{CURVES}}", curves or "<p>No curves.</p>")
        # "</" inside a script element would end it early.
        .replace("{{DATA}}", json.dumps(data, separators=(",", ":")).replace("</", "<\\/"))
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    if failed:
        log.warning("report: %d thumbnail(s) could not be made (shown empty): %s", len(failed), "; ".join(failed[:5]))
    return path
