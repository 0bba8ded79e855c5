"""The metrics through PySODMetrics, split into per-image work and a fixed-order combine.

:func:`image_scores` runs the library's metric classes on one image (fresh objects, so each
number is exactly the value the library records for that image). :class:`CODMetrics`
keeps those per-image results in the order they were added and reduces them with the
library's own reductions (``np.mean`` over images of float64 values; for the 256-threshold
curves the curve is averaged over images first, then its mean or max is taken). Scoring
processes therefore only compute :class:`ImageScores`; the parent adds them in file-name
order, and any number of workers gives bit-identical results.

Conventions (the library's): maps and masks are uint8 greyscale; masks are binarised at
``> 128``; each map is min-max scaled to [0, 1] unless it is constant; F-measure uses
beta^2 = 0.3, weighted F-measure beta = 1. Dice and IoU come from the same per-image
histogram as the F-measure (``FmeasureV2`` with ``DICEHandler`` / ``IOUHandler``): ``mDice`` /
``maxDice`` are the mean / max over the 256 thresholds of the dataset-mean Dice curve, as the
library reduces its dynamic results. ``CCM`` (``CamouflageContextMeasure``, library defaults) also
reads the photo, RGB at the mask's size; ``HCE`` (``HumanCorrectionEffortMeasure``, relax 5,
epsilon 2) counts the clicks a person needs to correct the map at the mask's full resolution.
Both are computed only when asked (they cost far more than the rest, see the README), and reduced
with ``np.mean`` over images as the library does.

Range guard (ours): no number leaves [0, 1] (HCE: a finite count >= 0). Images smaller than ``cod_benchmarks.MIN_SIDE``
on a side, and images whose metrics are not finite (e.g. S-measure of a mask whose only object
pixel sits on the border), are refused with ValueError; the scorer lists them and scores the
rest. The library divides the E-measure's alignment sum by ``H*W - 1``, so a perfect map scores
``H*W / (H*W - 1)``; E-measure values are clipped to 1 (a change of at most ``1 / (H*W - 1)``,
and none at all wherever the library's value is in range).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import py_sod_metrics as sod
from py_sod_metrics.utils import prepare_data

from cod_benchmarks import too_small

from .names import COD_KEYS

N_THRESHOLDS = 256


@dataclass(frozen=True)
class ImageScores:
    """Everything the dataset-level metrics need from one image.

    Curves are float64 arrays of shape [256] in the library's order: index ``i`` is the
    binarisation threshold ``255 - i`` (pixels ``>= 255 - i`` count as foreground).
    """

    sm: float
    wfm: float
    mae: float
    em_adp: float
    fm_adp: float
    em_curve: np.ndarray
    fm_curve: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    dice_curve: np.ndarray
    iou_curve: np.ndarray
    ccm: float | None = None  # only when the photo was given
    hce: float | None = None  # only when asked for


@dataclass(frozen=True)
class Curves:
    """Dataset-mean curves, each [256], indexed by threshold 0..255 (ascending)."""

    precision: np.ndarray
    recall: np.ndarray
    fmeasure: np.ndarray
    emeasure: np.ndarray
    dice: np.ndarray
    iou: np.ndarray


def _fmeasure_v2() -> sod.FmeasureV2:
    # FmeasureV2 computes one histogram per image for all three; the older Fmeasure class
    # gives the same numbers but is deprecated by the library.
    return sod.FmeasureV2(
        metric_handlers={
            "fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=True, beta=0.3),
            "pre": sod.PrecisionHandler(with_dynamic=True, with_adaptive=False),
            "rec": sod.RecallHandler(with_dynamic=True, with_adaptive=False),
            "dice": sod.DICEHandler(with_dynamic=True, with_adaptive=False),
            "iou": sod.IOUHandler(with_dynamic=True, with_adaptive=False),
        }
    )


def check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    """Raise ValueError unless ``pred`` and ``gt`` are same-sized 2-D uint8 arrays."""
    for what, a in (("prediction", pred), ("mask", gt)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 2:
            desc = f"{a.dtype} array of shape {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"{what} must be a 2-D uint8 array (H x W, values 0..255), got a {desc}")
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction {pred.shape} and mask {gt.shape} differ in size; resize the "
            "prediction to the mask's size first (bilinear)"
        )
    reason = too_small(*gt.shape)
    if reason:
        raise ValueError(f"mask {reason}")


def image_scores(pred: np.ndarray, gt: np.ndarray, photo: np.ndarray | None = None, hce: bool = False) -> ImageScores:
    """Score one map. ``pred``, ``gt``: uint8 [H, W] (same size). ``photo``: uint8 RGB
    [H, W, 3], the image the map was made from: given, the CCM is computed too. ``hce``: compute
    the human correction effort."""
    check_pair(pred, gt)
    if photo is not None and (photo.dtype != np.uint8 or photo.shape != (*gt.shape, 3)):
        raise ValueError(f"photo must be a uint8 RGB array of shape {(*gt.shape, 3)}, got {photo.dtype} {photo.shape}")
    # The library's own normalisation (mask > 128, min-max scaled map), done once and
    # handed to every metric with normalize=False instead of being repeated five times.
    pred_n, gt_b = prepare_data(pred, gt)
    sm, em, wfm, mae, fm = sod.Smeasure(), sod.Emeasure(), sod.WeightedFmeasure(), sod.MAE(), _fmeasure_v2()
    with warnings.catch_warnings():  # degenerate images warn here; the range guard below refuses them
        warnings.simplefilter("ignore", RuntimeWarning)
        for metric in (sm, em, wfm, mae, fm):
            metric.step(pred_n, gt_b, normalize=False)
        ccm = hce_m = None
        if photo is not None:
            ccm = sod.CamouflageContextMeasure()
            ccm.step(pred_n, gt_b, img=photo, normalize=False)
        if hce:
            hce_m = sod.HumanCorrectionEffortMeasure()
            hce_m.step(pred_n, gt_b, normalize=False)
    # get_results() of a one-image accumulator is that image's value, exactly (x / 1).
    em_r, fm_r = em.get_results()["em"], fm.get_results()
    scores = ImageScores(
        sm=float(sm.get_results()["sm"]),
        wfm=float(wfm.get_results()["wfm"]),
        mae=float(mae.get_results()["mae"]),
        em_adp=min(float(em_r["adp"]), 1.0),
        fm_adp=float(fm_r["fm"]["adaptive"]),
        em_curve=np.minimum(np.asarray(em_r["curve"], dtype=np.float64), 1.0),
        fm_curve=np.asarray(fm_r["fm"]["dynamic"], dtype=np.float64),
        precision=np.asarray(fm_r["pre"]["dynamic"], dtype=np.float64),
        recall=np.asarray(fm_r["rec"]["dynamic"], dtype=np.float64),
        dice_curve=np.asarray(fm_r["dice"]["dynamic"], dtype=np.float64),
        iou_curve=np.asarray(fm_r["iou"]["dynamic"], dtype=np.float64),
        ccm=None if ccm is None else float(ccm.get_results()["ccm"]),
        hce=None if hce_m is None else float(hce_m.get_results()["hce"]),
    )
    _check_range(scores)
    return scores


def _check_range(scores: ImageScores) -> None:
    """Raise ValueError naming every metric of one image that is not a number in [0, 1]."""
    bad = []
    for name in ImageScores.__dataclass_fields__:
        if getattr(scores, name) is None:
            continue
        values = np.asarray(getattr(scores, name), dtype=np.float64)
        top = np.inf if name == "hce" else 1.0
        if not (np.all(np.isfinite(values)) and values.min() >= 0.0 and values.max() <= top):
            bad.append(name)
    if bad:
        raise ValueError(f"metrics not in [0, 1] or not finite: {', '.join(bad)}")


def _mean(values: list) -> np.ndarray:
    # Exactly the library's reduction: float64 array, np.mean over the image axis.
    return np.mean(np.array(values, dtype=np.float64), axis=0)


class CODMetrics:
    """Accumulates per-image scores; ``results()`` gives the dataset-level numbers.

    Usage: ``m = CODMetrics(); m.step(pred_u8, gt_u8) ...; m.results()``. Workers can
    compute :func:`image_scores` elsewhere and :meth:`add` them here in a fixed order.
    """

    def __init__(self) -> None:
        self._images: list[ImageScores] = []

    def __len__(self) -> int:
        return len(self._images)

    def __iter__(self) -> Iterator[ImageScores]:
        """The per-image scores in the order they were added."""
        return iter(self._images)

    def step(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Score one map. ``pred``, ``gt``: uint8 [H, W], same size (resize the map first)."""
        self._images.append(image_scores(pred, gt))

    def add(self, scores: ImageScores) -> None:
        self._images.append(scores)

    def _require_images(self) -> None:
        if not self._images:
            raise ValueError("no images were scored, so there are no metrics to report")

    def results(self) -> dict:
        """``{"Sm", "wFm", "MAE", "Em_adp", "Em_mean", "Em_max", "Fm_adp", "Fm_mean",
        "Fm_max", "mDice", "mIoU", "maxDice", "maxIoU", ["CCM"], ["HCE"], "n_images"}`` as Python
        floats (n_images: int). CCM / HCE are there when every image was scored with them."""
        self._require_images()
        ims = self._images
        em_curve = _mean([s.em_curve for s in ims])
        fm_curve = _mean([s.fm_curve for s in ims])
        dice_curve = _mean([s.dice_curve for s in ims])
        iou_curve = _mean([s.iou_curve for s in ims])
        out = {
            "Sm": _mean([s.sm for s in ims]),
            "wFm": _mean([s.wfm for s in ims]),
            "MAE": _mean([s.mae for s in ims]),
            "Em_adp": _mean([s.em_adp for s in ims]),
            "Em_mean": em_curve.mean(),
            "Em_max": em_curve.max(),
            "Fm_adp": _mean([s.fm_adp for s in ims]),
            "Fm_mean": fm_curve.mean(),
            "Fm_max": fm_curve.max(),
        }
        assert tuple(out) == COD_KEYS
        out |= {
            "mDice": dice_curve.mean(),
            "mIoU": iou_curve.mean(),
            "maxDice": dice_curve.max(),
            "maxIoU": iou_curve.max(),
        }
        if all(s.ccm is not None for s in ims):
            out["CCM"] = _mean([s.ccm for s in ims])
        # Means of per-image values in [0, 1]: the clip only absorbs float rounding at the ends.
        out = {k: float(np.clip(v, 0.0, 1.0)) for k, v in out.items()}
        if all(s.hce is not None for s in ims):
            out["HCE"] = float(_mean([s.hce for s in ims]))
        return {**out, "n_images": len(ims)}

    def mean_scores(self) -> ImageScores:
        """The mean over the images of each per-image number and curve: one row standing for them all
        (a video sequence's, which the video protocol then averages over sequences)."""
        self._require_images()
        ims = self._images
        means = {
            name: _mean([getattr(s, name) for s in ims])
            for name in ImageScores.__dataclass_fields__
            if all(getattr(s, name) is not None for s in ims)
        }
        return ImageScores(**{k: v if v.ndim else float(v) for k, v in means.items()})

    def curves(self) -> Curves:
        """Dataset-mean precision, recall, F-measure, E-measure, Dice and IoU against threshold 0..255."""
        self._require_images()
        ims = self._images
        # flip: the library indexes thresholds 255..0
        return Curves(
            precision=np.flip(_mean([s.precision for s in ims])).copy(),
            recall=np.flip(_mean([s.recall for s in ims])).copy(),
            fmeasure=np.flip(_mean([s.fm_curve for s in ims])).copy(),
            emeasure=np.flip(_mean([s.em_curve for s in ims])).copy(),
            dice=np.flip(_mean([s.dice_curve for s in ims])).copy(),
            iou=np.flip(_mean([s.iou_curve for s in ims])).copy(),
        )
