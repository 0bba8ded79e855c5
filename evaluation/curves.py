"""Precision-recall, F-measure-vs-threshold and Dice / IoU-vs-threshold curves, one PNG per benchmark.

Several runs or methods share each plot. Figures are drawn with matplotlib's object API
on the Agg canvas (no pyplot, no display, no global state), so this works on servers
and in worker processes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .discovery import sort_benchmarks
from .metrics import Curves


def plot_benchmark(curves: dict[str, Curves], benchmark: str, path: str | Path) -> Path:
    """Draw ``{run name: Curves}`` for one benchmark to ``path`` (PNG): PR on the left, then the
    F-measure (max marked), then Dice (solid) and IoU (dashed) against the binarisation threshold,
    the curves whose means are ``mDice`` / ``mIoU``."""
    fig = Figure(figsize=(16, 4.6), dpi=110)
    ax_pr, ax_fm, ax_di = fig.subplots(1, 3)
    thresholds = np.arange(len(next(iter(curves.values())).fmeasure))
    for i, (run, c) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        best = int(np.argmax(c.fmeasure))
        ax_pr.plot(c.recall, c.precision, color=colour, lw=1.6, label=run)
        ax_pr.plot(c.recall[best], c.precision[best], "o", color=colour, ms=4)
        ax_fm.plot(
            thresholds,
            c.fmeasure,
            color=colour,
            lw=1.6,
            label=f"{run} (max {c.fmeasure[best]:.3f} at {best}, mean {c.fmeasure.mean():.3f})",
        )
        ax_fm.plot(best, c.fmeasure[best], "o", color=colour, ms=4)
        ax_di.plot(thresholds, c.dice, color=colour, lw=1.6, label=f"{run} Dice (mean {c.dice.mean():.3f})")
        ax_di.plot(thresholds, c.iou, color=colour, lw=1.2, ls="--", label=f"{run} IoU (mean {c.iou.mean():.3f})")
    axes = {
        ax_pr: ("Recall", "Precision", 1, "precision-recall (thresholds 0..255)"),
        ax_fm: ("Threshold t (min-max scaled map >= t is foreground)", "F-measure (beta^2 = 0.3)", thresholds[-1],
                "F-measure vs threshold"),
        ax_di: ("Threshold t", "Dice / IoU", thresholds[-1], "Dice and IoU vs threshold"),
    }  # fmt: skip
    for ax, (xlabel, ylabel, xmax, title) in axes.items():
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, xmax), ylim=(0, 1.02), title=f"{benchmark}: {title}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_curves(runs: dict[str, dict[str, Curves]], out_dir: str | Path) -> list[Path]:
    """``{run: {benchmark: Curves}}`` -> ``out_dir/<benchmark>.png`` for every benchmark."""
    benches = sort_benchmarks({b for per_run in runs.values() for b in per_run})
    return [
        plot_benchmark(
            {run: per_run[b] for run, per_run in runs.items() if b in per_run}, b, Path(out_dir) / f"{b}.png"
        )
        for b in benches
    ]
