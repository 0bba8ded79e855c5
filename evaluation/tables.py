"""results.json and the papers' table layout: one row per run or method, columns benchmark x metric.

``runs`` below is ``{run name: {benchmark: {metric: value, ..., "n_images": n}}}``.
Metric names say which variant they are: ``Em_adp`` / ``Em_mean`` / ``Em_max`` are the
E-measure at the adaptive threshold (2 x mean of the map) / averaged over the 256
thresholds / at the best threshold; likewise ``Fm_*`` (beta^2 = 0.3); ``wFm`` is the weighted
F-measure (beta = 1); MAE is lower-is-better, every other metric higher-is-better.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .discovery import sort_benchmarks
from .names import LOWER_IS_BETTER, METRIC_KEYS, ordered_keys

LEGEND = (
    "Sm: S-measure (alpha 0.5). wFm: weighted F-measure (beta 1). MAE: mean absolute error (lower is "
    "better). Em/Fm: E-measure / F-measure (beta^2 0.3) at the adaptive threshold (adp, 2 x mean of the "
    "map), averaged over thresholds 0..255 (mean), at the best threshold (max). All computed with "
    "PySODMetrics conventions: maps min-max scaled per image, masks binarised at > 128. mDice/mIoU, "
    "maxDice/maxIoU: Dice / IoU averaged over thresholds 0..255 / at the best threshold. CCM: "
    "Context-measure with camouflage degree (COD). HCE: human correction effort (DIS; lower is better)."
)


def write_results_json(
    results: dict[str, dict], path: str | Path, extra: dict | None = None, details: dict[str, dict] | None = None
) -> None:
    """``{benchmark: {"Sm", ..., "Fm_max", "mDice", ..., "n_images"}}`` with the metric keys each
    benchmark holds (in :data:`METRIC_KEYS` order), then ``extra``'s (how the maps were made, e.g.
    ``{"tta": {...}}``) in every benchmark's entry, and ``details[benchmark]``'s in that one's."""
    ordered = {
        b: {
            **{k: results[b][k] for k in (*ordered_keys(results[b]), "n_images")},
            **(extra or {}),
            **(details or {}).get(b, {}),
        }
        for b in sort_benchmarks(results)
    }
    Path(path).write_text(json.dumps(ordered, indent=2) + "\n")


def _benchmarks(runs: dict[str, dict]) -> list[str]:
    return sort_benchmarks({b for res in runs.values() for b in res})


def _keys(runs: dict[str, dict]) -> list[str]:
    """The table's metric columns: every metric some run holds for some benchmark, in order."""
    return ordered_keys({k: None for res in runs.values() for r in res.values() for k in r})


def _cell(res: dict, bench: str, key: str, digits: int) -> str:
    if bench not in res or key not in res[bench]:
        return "-"
    return f"{res[bench][key]:.{digits}f}"


def _n_label(runs: dict[str, dict], bench: str) -> str:
    counts = {res[bench]["n_images"] for res in runs.values() if bench in res}
    return f"n={counts.pop()}" if len(counts) == 1 else "n differs"


def _best(runs: dict[str, dict], bench: str, key: str) -> float | None:
    values = [res[bench][key] for res in runs.values() if key in res.get(bench, {})]
    if len(values) < 2:
        return None
    return min(values) if key in LOWER_IS_BETTER else max(values)


def format_table(runs: dict[str, dict], digits: int = 3) -> str:
    """A fixed-width text table for the terminal: a benchmark header row over the metric row."""
    benches, keys = _benchmarks(runs), _keys(runs)
    width = max(len(k) for k in METRIC_KEYS) + 1
    name_w = max([len("Method")] + [len(r) for r in runs])
    group_w = len(keys) * (width + 1) - 1
    top = " " * name_w + " | " + " | ".join(f"{b} ({_n_label(runs, b)})".center(group_w) for b in benches)
    sub = "Method".ljust(name_w) + " | " + " | ".join(" ".join(k.rjust(width) for k in keys) for _ in benches)
    lines = [top, sub, "-" * len(sub)]
    for run, res in runs.items():
        cells = []
        for b in benches:
            vals = [_cell(res, b, k, digits) for k in keys]
            cells.append(" ".join(v.rjust(width) for v in vals))
        lines.append(run.ljust(name_w) + " | " + " | ".join(cells))
    return "\n".join(lines)


def format_markdown(runs: dict[str, dict], digits: int = 3) -> str:
    """A Markdown table (best value per column in bold when several runs are compared)."""
    benches, keys = _benchmarks(runs), _keys(runs)
    arrow = {k: "↓" if k in LOWER_IS_BETTER else "↑" for k in keys}
    header = ["Method"] + [f"{b} {k} {arrow[k]}" for b in benches for k in keys]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for run, res in runs.items():
        cells = [run]
        for b in benches:
            for k in keys:
                text = _cell(res, b, k, digits)
                if text == "-":
                    cells.append(text)
                    continue
                cells.append(f"**{text}**" if res[b][k] == _best(runs, b, k) else text)
        rows.append("| " + " | ".join(cells) + " |")
    counts = "; ".join(f"{b}: {_n_label(runs, b)}" for b in benches)
    return "\n".join(rows) + f"\n\nImages per benchmark: {counts}.\n\n{LEGEND}\n"


def write_tables(runs: dict[str, dict], out_dir: str | Path, digits: int = 3) -> tuple[Path, Path]:
    """``results.md`` (rounded, papers' layout) and ``results.csv`` (full precision) in ``out_dir``."""
    out_dir = Path(out_dir)
    md, csv_path = out_dir / "results.md", out_dir / "results.csv"
    md.write_text(format_markdown(runs, digits))
    benches = _benchmarks(runs)
    keys = (*_keys(runs), "n_images")
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method"] + [f"{b}/{k}" for b in benches for k in keys])
        for run, res in runs.items():
            writer.writerow([run] + [repr(res[b][k]) if k in res.get(b, {}) else "" for b in benches for k in keys])
    return md, csv_path
