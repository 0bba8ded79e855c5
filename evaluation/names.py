"""The names of the metrics, in column order: the keys of ``results.json``.

Kept apart from :mod:`evaluation.metrics` (which loads PySODMetrics and scikit-learn) so that the
config schema can offer them as the choices of ``train.best_metric`` without importing either.

- ``COD_KEYS``: the COD papers' columns (S-, weighted F-, E- and F-measure, MAE).
- ``OVERLAP_KEYS``: Dice and IoU, the mean / max over the 256 thresholds of the dataset-mean
  curves (polyp, video-COD and SOD papers report ``mDice`` and ``mIoU``).
- ``CCM``: the Context-measure with camouflage degree (reads the photo; COD benchmarks).
- ``HCE``: the human correction effort (DIS benchmarks; a count of clicks, lower is better).

Which a benchmark gets by default (``test.py`` without ``--metrics``): :func:`metrics_for`.
"""

from cod_benchmarks import COD, DIS, field_of

COD_KEYS = ("Sm", "wFm", "MAE", "Em_adp", "Em_mean", "Em_max", "Fm_adp", "Fm_mean", "Fm_max")
OVERLAP_KEYS = ("mDice", "mIoU", "maxDice", "maxIoU")
METRIC_KEYS = (*COD_KEYS, *OVERLAP_KEYS, "CCM", "HCE")
# Minimised rather than maximised; "loss" is the validation loss and "train_loss" the epoch's mean
# training loss, which train.best_metric may pick too.
LOWER_IS_BETTER = frozenset({"MAE", "HCE", "loss", "train_loss"})


def ordered_keys(results: dict) -> list[str]:
    """The metric keys ``results`` holds, in :data:`METRIC_KEYS` order."""
    return [k for k in METRIC_KEYS if k in results]


def metrics_for(benchmark: str, requested: list[str] | None = None) -> list[str]:
    """The metrics to report for ``benchmark``: ``requested`` (``test.py --metrics``) when given,
    else the COD keys and Dice / IoU everywhere, CCM on the registered COD benchmarks and HCE on
    the DIS ones (the fields that report them; each costs more than all the others together)."""
    if requested:
        unknown = [k for k in requested if k not in METRIC_KEYS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_KEYS)}")
        return [k for k in METRIC_KEYS if k in requested]
    field = field_of(benchmark)
    return [*COD_KEYS, *OVERLAP_KEYS, *(["CCM"] if field == COD else []), *(["HCE"] if field == DIS else [])]


def parse_metrics(text: str) -> list[str]:
    """``test.py --metrics``: ``"mIoU,Sm"`` -> the named metrics in column order (ValueError: none, or an unknown one)."""
    requested = [k for k in text.replace(",", " ").split() if k]
    if not requested:
        raise ValueError("name at least one metric, e.g. --metrics Sm,mDice")
    return metrics_for("", requested)
