"""The names of the COD metrics, in the papers' column order: the keys of ``results.json``.

Kept apart from :mod:`evaluation.metrics` (which loads PySODMetrics and scikit-learn) so that the
config schema can offer them as the choices of ``train.best_metric`` without importing either.
"""

METRIC_KEYS = ("Sm", "wFm", "MAE", "Em_adp", "Em_mean", "Em_max", "Fm_adp", "Fm_mean", "Fm_max")
# Minimised rather than maximised; "loss" is the validation loss and "train_loss" the epoch's mean
# training loss, which train.best_metric may pick too.
LOWER_IS_BETTER = frozenset({"MAE", "loss", "train_loss"})
