"""The field's folder layouts: find image/mask folders, pair files by stem, discover benchmarks.

Accepted (no renaming needed):
- SINet-V2: ``TrainDataset/{Imgs,GT}`` (or ``TrainValDataset/``), ``TestDataset/<name>/{Imgs,GT}``;
- CamoFormer: ``TrainDataset/{Image,GT}``; also ``images/``/``masks/``, ``Mask/``.
- DIS5K as it unpacks: ``DIS5K/DIS-TE1/{im,gt}`` (the root may be the DIS5K folder or hold it);
  other downloads' own folder names (``DUTS-TE/DUTS-TE-{Image,Mask}``) from the registry.
Folder names match case-insensitively; files pair by stem whatever their extension's case.
Which files count as images and masks, and the benchmarks' order: :mod:`cod_benchmarks`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cod_benchmarks import (
    COLLECTIONS,
    IMAGE_EXTS,
    MASK_EXTS,
    benchmark_info,
    is_training_set,
    list_files,
    sort_benchmarks,
)

from .problems import DatasetError, Problem

log = logging.getLogger(__name__)

IMAGE_DIRS = ("imgs", "image", "images", "img", "im")
MASK_DIRS = ("gt", "mask", "masks", "gts")
TEST_DIR = "TestDataset"


def _subdir(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first subfolder whose lower-cased name is in ``names`` (in that priority order)."""
    found = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir()} if folder.is_dir() else {}
    hits = [found[n] for n in names if n in found]
    if len(hits) > 1:
        log.warning(
            "%s holds several candidate folders (%s); using %s", folder, ", ".join(h.name for h in hits), hits[0].name
        )
    return hits[0] if hits else None


def _dir_names(folder: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The image and mask folder names to look for in ``folder``: the generic ones, then those
    of the registered benchmark it is named after."""
    info = benchmark_info(folder.name)
    extra_img = tuple(n.lower() for n in info.image_dirs) if info else ()
    extra_gt = tuple(n.lower() for n in info.mask_dirs) if info else ()
    return IMAGE_DIRS + extra_img, MASK_DIRS + extra_gt


def split_dirs(folder: Path) -> tuple[Path, Path] | None:
    """(image dir, mask dir) inside ``folder``, or None if it does not hold both."""
    img_names, gt_names = _dir_names(folder)
    img, gt = _subdir(folder, img_names), _subdir(folder, gt_names)
    return (img, gt) if img and gt else None


def _layout_hint(folder: Path) -> str:
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return (
        f"expected an image folder ({'/'.join(('Imgs', 'Image', 'images'))}) and a mask folder "
        f"({'/'.join(('GT', 'Mask', 'masks'))}) in {folder}; it holds: {', '.join(subs) or 'no folders'}"
    )


def _list(folder: Path, exts: tuple[str, ...]) -> tuple[dict[str, list[Path]], list[Problem]]:
    """stem -> files (preferred first); an empty folder is a problem, other files are counted in the log."""
    by_stem = list_files(folder, exts)
    other = sum(1 for p in folder.iterdir() if not p.name.startswith(".") and p.is_file()) - sum(
        len(f) for f in by_stem.values()
    )
    if other:
        log.info("%s: ignored %d file(s) without an image extension (%s)", folder, other, " ".join(exts))
    problems = [] if by_stem else [Problem(str(folder), f"empty folder: no {'/'.join(exts)} files")]
    return by_stem, problems


def pair_files(img_dir: Path, gt_dir: Path) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """Pair images and masks by stem. Unpaired or duplicated stems are problems (and skipped)."""
    images, problems = _list(img_dir, IMAGE_EXTS)
    masks, mask_problems = _list(gt_dir, MASK_EXTS)
    problems += mask_problems
    pairs = []
    for stem in sorted(images):
        files = images[stem]
        if len(files) > 1:
            problems += [
                Problem(str(f), f"another image has the same name ({files[0].name}); using that one") for f in files[1:]
            ]
        if stem not in masks:
            problems.append(Problem(str(files[0]), f"image without a mask (no {stem}.* in {gt_dir})"))
            continue
        cands = masks[stem]  # the preferred format first
        if len(cands) > 1:
            problems += [
                Problem(str(m), f"another mask has the same name ({cands[0].name}); using that one") for m in cands[1:]
            ]
        pairs.append((files[0], cands[0]))
    for stem in sorted(set(masks) - set(images)):
        problems.append(Problem(str(masks[stem][0]), f"mask without an image (no {stem}.* in {img_dir})"))
    return pairs, problems


def resolve_train_dirs(root: Path, entries: list[str]) -> list[tuple[Path, Path]]:
    """(image dir, mask dir) of each ``data.train`` entry (relative to ``root`` or absolute)."""
    dirs = []
    for entry in entries:
        folder = root / entry
        if not folder.is_dir() and entry == "TrainDataset" and (root / "TrainValDataset").is_dir():
            folder = root / "TrainValDataset"  # SINet-V2's name for the same thing
            log.info("using %s (no TrainDataset/ under %s)", folder, root)
        if not folder.is_dir():
            raise DatasetError(_missing(folder, root, "training folder", "data.train"))
        found = split_dirs(folder)
        if found is None:
            raise DatasetError(f"training folder {folder}: {_layout_hint(folder)}")
        dirs.append(found)
    return dirs


def _missing(folder: Path, root: Path, what: str, key: str) -> str:
    if not root.is_dir():
        return (
            f"data.root {root} does not exist: set data.root=PATH to the folder holding TrainDataset/ "
            f"and TestDataset/, or generate a demo set with "
            f"'python scripts/make_synthetic_cod.py --out {root}'"
        )
    subs = sorted(p.name for p in root.iterdir() if p.is_dir())
    return f"{what} {folder} not found; {root} holds: {', '.join(subs) or 'nothing'} (set {key} or data.root)"


def find_benchmark_dirs(
    root: str | Path, names: list[str] | None = None, need_images: bool = True
) -> dict[str, tuple[Path | None, Path]]:
    """Benchmarks under ``root/TestDataset`` (or ``root`` itself if it is that folder), and in a
    collection folder there or in ``root`` (``DIS5K/``). Registered training sets (DIS-TR, DUTS-TR) are not test
    benchmarks unless named.

    Returns ``{name: (image dir, mask dir)}`` in the papers' order (CAMO, CHAMELEON, COD10K, NC4K,
    then others by name). ``names`` picks benchmarks by folder name (case-insensitive) or by path
    (absolute, or relative to ``root``); a name that is not found raises :class:`DatasetError`.
    ``need_images=False`` (scoring saved maps, which never reads an image) also accepts a
    benchmark with a mask folder only; its image dir is then None.
    """
    root = Path(root)
    base = root / TEST_DIR if (root / TEST_DIR).is_dir() else root
    holds = "Imgs/ and GT/" if need_images else "GT/"

    def dirs_of(folder: Path) -> tuple[Path | None, Path] | None:
        if not folder.is_dir():
            return None
        if need_images:
            return split_dirs(folder)
        img_names, gt_names = _dir_names(folder)
        gt = _subdir(folder, gt_names)
        return (_subdir(folder, img_names), gt) if gt else None

    found: dict[str, tuple[Path | None, Path]] = {}
    homes = [d for d in dict.fromkeys((base, root)) if d.is_dir()]
    bases = [base] * base.is_dir() + [c for d in homes for c in sorted(d.iterdir()) if c.name.upper() in COLLECTIONS]
    for folder in bases:
        for sub in sorted(folder.iterdir()):
            dirs = dirs_of(sub)
            if dirs and not is_training_set(sub.name) and sub.name not in found:
                found[sub.name] = dirs
    found = {b: found[b] for b in sort_benchmarks(found)}
    if not names:
        if not found:
            raise DatasetError(
                f"no test benchmarks under {base}: expected {base}/<name>/ holding {holds} "
                "(e.g. CAMO, CHAMELEON, COD10K, NC4K)"
            )
        return found
    picked: dict[str, tuple[Path | None, Path]] = {}
    by_lower = {k.lower(): k for k in found}
    for name in names:
        if name.lower() in by_lower:
            key = by_lower[name.lower()]
            picked[key] = found[key]
            continue
        folder = Path(name) if Path(name).is_absolute() else root / name
        dirs = dirs_of(folder)
        if dirs is None:
            raise DatasetError(
                f"test benchmark '{name}' not found: {base} holds "
                f"{', '.join(found) or 'no benchmarks'}; name one of them or give a folder "
                f"with {holds} (data.test_sets / data.val_set)"
            )
        picked[folder.name] = dirs
    return picked
