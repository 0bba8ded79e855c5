"""COD evaluation through PySODMetrics. Import each name from its module:

- :mod:`evaluation.names`: the metric names (``METRIC_KEYS``) and which are minimised; no heavy imports.
- :mod:`evaluation.metrics`: ``CODMetrics`` (``.step(pred_u8, gt_u8)`` per image, ``.results()``,
  ``.curves()``) and ``image_scores`` for one image.
- :mod:`evaluation.maps`: reading maps and masks; :mod:`evaluation.discovery`: finding ``--preds`` folders.
- :mod:`evaluation.scoring`: ``Scorer``, a process pool scoring folders and benchmarks.
- :mod:`evaluation.tables`, :mod:`evaluation.curves`, :mod:`evaluation.report`: results.json / .md /
  .csv, PNG curves, report.html.

Which files a benchmark holds, and its name order: :mod:`cod_benchmarks`.
"""
