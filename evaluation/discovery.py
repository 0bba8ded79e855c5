"""Which files make a benchmark, and which folder of maps belongs to which benchmark.

Maps: one folder per benchmark, ``PREDS/<Benchmark>/*.png``, named like the masks (file
stems match; extensions may differ). Mask folders are found by the data package
(``datasets.find_benchmark_dirs``), which knows the field's layouts.

COD10K's benchmark is its 2,026 camouflaged test images, the files with ``-CAM-`` in
their names; scoring the whole COD10K-v3 test folder (which also holds non-camouflaged
images) gives numbers nobody can compare with.
"""

from __future__ import annotations

from pathlib import Path

from .maps import list_images

BENCHMARK_ORDER = ("CAMO", "CHAMELEON", "COD10K", "NC4K")  # the papers' column order


class EvaluationError(ValueError):
    """A user-fixable problem with the folders or files given for evaluation."""


def sort_benchmarks(names) -> list[str]:
    """The four standard benchmarks in the papers' order, then any others alphabetically."""
    rank = {b: i for i, b in enumerate(BENCHMARK_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n.upper(), len(rank)), n.upper()))


def is_cod10k(benchmark: str) -> bool:
    return benchmark.upper().startswith("COD10K")


def select_benchmark_images(benchmark: str, names: list, key=str) -> tuple[list, list]:
    """Split file names (or items whose ``key(item)`` is the name) into (scored, excluded) by the
    benchmark's definition. The one place that defines COD10K's benchmark, for every mode.

    COD10K: only ``-CAM-`` files are the benchmark. A COD10K folder with no ``-CAM-`` file
    at all does not use COD10K's naming (e.g. a generated set), so everything is kept.
    """
    if not is_cod10k(benchmark):
        return list(names), []
    cam = [n for n in names if "-CAM-" in key(n)]
    if not cam:
        return list(names), []
    return cam, [n for n in names if "-CAM-" not in key(n)]


def find_pred_dirs(preds: str | Path) -> dict[str, Path]:
    """``{benchmark: folder of maps}``: the sub-folders of ``preds`` that hold images."""
    preds = Path(preds)
    if not preds.is_dir():
        raise EvaluationError(
            f"--preds folder '{preds}' does not exist (give a folder with one "
            "sub-folder of maps per benchmark, e.g. maps/CAMO/*.png)"
        )
    found = {sub.name: sub for sub in sorted(preds.iterdir()) if sub.is_dir() and list_images(sub)}
    if found:
        return {b: found[b] for b in sort_benchmarks(found)}
    if list_images(preds):
        raise EvaluationError(
            f"--preds folder '{preds}' holds maps directly; put them in one sub-folder "
            f"per benchmark named like the data's (e.g. '{preds}/CAMO/*.png')"
        )
    raise EvaluationError(
        f"--preds folder '{preds}' has no prediction maps (expected "
        f"'{preds}/<Benchmark>/*.png', e.g. '{preds}/CAMO/camourflage_00012.png')"
    )


def match_benchmarks(
    pred_dirs: dict[str, Path], gt_dirs: dict[str, Path]
) -> tuple[dict[str, tuple[Path, Path]], list[str], list[str]]:
    """Pair map folders with mask folders by benchmark name (exact, else case-insensitive).

    Returns ``({benchmark: (pred_dir, gt_dir)}, map folders with no masks, benchmarks with no maps)``.
    """
    by_upper = {b.upper(): b for b in gt_dirs}
    matched: dict[str, tuple[Path, Path]] = {}
    unmatched = []
    for name, folder in pred_dirs.items():
        gt_name = name if name in gt_dirs else by_upper.get(name.upper())
        if gt_name is None or gt_name in matched:
            unmatched.append(name)
        else:
            matched[gt_name] = (folder, gt_dirs[gt_name])
    no_maps = [b for b in gt_dirs if b not in matched]
    return {b: matched[b] for b in sort_benchmarks(matched)}, unmatched, no_maps
