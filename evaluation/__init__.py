"""COD evaluation through PySODMetrics: per-image scores, parallel folder scoring, tables, curves.

- :class:`CODMetrics`: ``.step(pred_u8, gt_u8)`` per image, ``.results()`` -> the keys of
  ``config.METRIC_KEYS`` plus ``n_images``; ``.curves()`` -> mean PR / F / E curves.
- :func:`score_folder`: a folder of maps against a folder of masks, in a process pool.
- :class:`Scorer`: the pool itself, for scoring many benchmarks and runs with one pool.
- Which files a benchmark holds, and its name order: :mod:`cod_benchmarks`.
- :mod:`evaluation.tables`, :mod:`evaluation.curves`: results.json / .md / .csv, PNG curves.
"""

from .curves import plot_benchmark, plot_curves
from .discovery import EvaluationError, find_pred_dirs, match_benchmarks, one_map_per_image
from .maps import MapIssues, read_map, read_mask
from .metrics import CODMetrics, Curves, ImageScores, image_scores
from .scoring import ImageResult, Scorer, available_cores, log_issues, pair_folder, score_benchmark, score_folder
from .tables import format_markdown, format_table, write_results_json, write_tables

__all__ = [
    "CODMetrics",
    "Curves",
    "ImageScores",
    "image_scores",
    "Scorer",
    "ImageResult",
    "score_benchmark",
    "score_folder",
    "pair_folder",
    "available_cores",
    "log_issues",
    "EvaluationError",
    "find_pred_dirs",
    "match_benchmarks",
    "one_map_per_image",
    "MapIssues",
    "read_map",
    "read_mask",
    "format_markdown",
    "format_table",
    "write_results_json",
    "write_tables",
    "plot_benchmark",
    "plot_curves",
]
