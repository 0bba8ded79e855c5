"""Which folder of maps belongs to which benchmark, and which map belongs to which mask.

Maps: one folder per benchmark, ``PREDS/<Benchmark>/*.png``, named like the masks (file
stems match; extensions may differ). Mask folders are found by the data package
(``datasets.find_benchmark_dirs``), which knows the field's layouts; which files a
benchmark scores is :mod:`cod_benchmarks`' rule.
"""

from __future__ import annotations

from pathlib import Path

from cod_benchmarks import list_masks, sort_benchmarks


class EvaluationError(ValueError):
    """A user-fixable problem with the folders or files given for evaluation."""


def one_map_per_image(folder: str | Path) -> dict[str, Path]:
    """``{stem: map file}`` of a folder of prediction maps; two maps for one image (``x.jpg``
    and ``x.png``: which one is current?) raise :class:`EvaluationError` naming both."""
    maps = list_masks(folder)
    doubles = [files for files in maps.values() if len(files) > 1]
    if doubles:
        shown = "; ".join(" and ".join(p.name for p in files) for files in doubles[:5])
        more = f" (and {len(doubles) - 5} more)" if len(doubles) > 5 else ""
        raise EvaluationError(
            f"{folder}: two maps for one image: {shown}{more}; remove the stale file(s) so each image has one map"
        )
    return {stem: files[0] for stem, files in maps.items()}


def find_pred_dirs(preds: str | Path) -> dict[str, Path]:
    """``{benchmark: folder of maps}``: the sub-folders of ``preds`` that hold images."""
    preds = Path(preds)
    if not preds.is_dir():
        raise EvaluationError(
            f"--preds folder '{preds}' does not exist (give a folder with one "
            "sub-folder of maps per benchmark, e.g. maps/CAMO/*.png)"
        )
    found = {sub.name: sub for sub in sorted(preds.iterdir()) if sub.is_dir() and list_masks(sub)}
    if found:
        return {b: found[b] for b in sort_benchmarks(found)}
    if list_masks(preds):
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
