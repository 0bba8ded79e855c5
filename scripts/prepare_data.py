"""Build the training/test layout from the official COD dataset downloads, and check the counts.

    python scripts/prepare_data.py --downloads ~/Downloads/cod --out data/COD [--copy]
    python scripts/prepare_data.py --cod10k .../COD10K-v3 --camo .../CAMO-V.1.0-CVIU2019 \\
        --chameleon .../CHAMELEON --nc4k .../NC4K --out data/COD

Reads each archive as it unpacks (``--downloads`` finds the folders below by name, one or two
levels down; a flag names one directly):

    COD10K-v3/{Train,Test}/{Image,GT_Object,...}     camouflaged images only ('-CAM-' in the name)
    CAMO-V.1.0-CVIU2019/{Images/{Train,Test},GT}     one mask folder for both splits
    CHAMELEON/{Image,GT}                             test only
    NC4K/{Imgs,GT}                                   test only

and writes ``OUT/TrainDataset/{Imgs,GT}`` (COD10K train + CAMO train) and
``OUT/TestDataset/{CAMO,CHAMELEON,COD10K,NC4K}/{Imgs,GT}`` as symbolic links to the original
files (``--copy`` copies them instead). Running it again replaces what it wrote. Images pair
with masks by file stem. Then every count is compared with the published one (train: COD10K
3,040 + CAMO 1,000 = 4,040; test: CAMO 250, CHAMELEON 76, COD10K 2,026, NC4K 4,121), and every
difference and every image without a mask (or mask without an image) is reported by name.
Video sets (``--moca``, ``--cad``, or found in ``--downloads``) are linked as they unpack, their
sequences counted against the published ones (MoCA-Mask 71 train / 16 test, CAD 9):

    MoCA-Mask/[MoCA_Video/]{TrainDataset_per_sq,TestDataset_per_sq}  -> OUT/MoCA-Mask/...
    CamouflagedAnimalDataset/<sequence>/{frames,groundtruth}         -> OUT/CamouflagedAnimalDataset

Exit status: 0 when all given archives match the published counts, 1 otherwise.
Point ``data.root`` (config_schema.py, README "Config reference") at OUT.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cod_benchmarks import (  # noqa: E402
    BENCHMARKS,
    CAMOUFLAGED_MARK,
    REGISTRY,
    list_images,
    list_masks,
    select_benchmark_images,
)
from scripts.parts.prepare_video import VIDEO_ARCHIVES, find_video_archive, prepare_videos  # noqa: E402


@dataclass(frozen=True)
class Part:
    """One split of one archive: image and mask folders relative to the archive's folder (the first
    candidate that exists is used; names match case-insensitively) and the published image count."""

    benchmark: str
    split: str  # "train" | "test"
    images: tuple[str, ...]
    masks: tuple[str, ...]
    published: int
    shared_masks: bool = False  # one mask folder for all splits (CAMO): masks of other splits are expected


@dataclass(frozen=True)
class Archive:
    flag: str
    folder_names: tuple[str, ...]  # what the download unpacks to (lower case, prefix match)
    parts: tuple[Part, ...]


ARCHIVES = (
    Archive(
        "cod10k",
        ("cod10k-v3", "cod10k"),
        (
            Part("COD10K", "train", ("Train/Image", "Train/Imgs"), ("Train/GT_Object", "Train/GT"), 3040),
            Part("COD10K", "test", ("Test/Image", "Test/Imgs"), ("Test/GT_Object", "Test/GT"), 2026),
        ),
    ),
    Archive(
        "camo",
        ("camo-v.1.0-cviu2019", "camo"),
        (
            Part("CAMO", "train", ("Images/Train", "Train/Images", "Train/Imgs"), ("GT", "Train/GT"), 1000, True),
            Part("CAMO", "test", ("Images/Test", "Test/Images", "Test/Imgs"), ("GT", "Test/GT"), 250, True),
        ),
    ),
    Archive("chameleon", ("chameleon",), (Part("CHAMELEON", "test", ("Image", "Images", "Imgs"), ("GT",), 76),)),
    Archive("nc4k", ("nc4k",), (Part("NC4K", "test", ("Imgs", "Image", "Images"), ("GT",), 4121),)),
)


@dataclass
class PartReport:
    part: Part
    source: Path | None = None  # the archive folder; None = not given
    found: int = 0  # image/mask pairs written
    excluded: int = 0  # COD10K non-camouflaged images left out
    problems: list[str] = field(default_factory=list)


def _child(folder: Path, rel: str) -> Path | None:
    """``folder/rel`` matching each component case-insensitively."""
    for name in rel.split("/"):
        if not folder.is_dir():
            return None
        hits = [p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() == name.lower()]
        if not hits:
            return None
        folder = hits[0]
    return folder


def _first(folder: Path, candidates: tuple[str, ...]) -> Path | None:
    return next((d for d in (_child(folder, c) for c in candidates) if d is not None), None)


def _files(folder: Path, masks: bool = False) -> dict[str, Path]:
    """``{stem: path}`` of the images (or masks: the preferred format) in ``folder``, as training reads them."""
    return {stem: files[0] for stem, files in (list_masks if masks else list_images)(folder).items()}


def find_archive(downloads: Path, archive: Archive) -> Path | None:
    """The folder of ``archive`` one or two levels under ``downloads`` (zips often unpack to X/X/)."""
    levels = [downloads] + [p for p in sorted(downloads.iterdir()) if p.is_dir()]
    for name in archive.folder_names:
        for level in levels:
            for p in sorted(level.iterdir()):
                if p.is_dir() and p.name.lower().startswith(name) and _first(p, archive.parts[0].images):
                    return p
    return None


def _place(src: Path, dst: Path, copy: bool) -> None:
    """Link (or copy) ``src`` to ``dst``, replacing an earlier run's file."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    if copy:
        shutil.copy2(src, tmp)
    else:
        os.symlink(src.resolve(), tmp)
    os.replace(tmp, dst)


def _names(paths: list[str], limit: int = 10) -> str:
    return ", ".join(paths[:limit]) + (f", ... ({len(paths) - limit} more)" if len(paths) > limit else "")


def build_part(source: Path, part: Part, img_out: Path, gt_out: Path, copy: bool) -> PartReport:
    report = PartReport(part, source)
    img_dir, gt_dir = _first(source, part.images), _first(source, part.masks)
    for what, folder, candidates in (("image", img_dir, part.images), ("mask", gt_dir, part.masks)):
        if folder is None:
            report.problems.append(f"no {what} folder ({' or '.join(candidates)}) in {source}")
    if img_dir is None or gt_dir is None:
        return report
    images, masks = _files(img_dir), _files(gt_dir, masks=True)
    kept, excluded = select_benchmark_images(part.benchmark, list(images))
    report.excluded = len(excluded)
    no_mask = [images[n].name for n in kept if n not in masks]
    if no_mask:
        report.problems.append(f"{len(no_mask)} image(s) have no mask in {gt_dir}: {_names(no_mask)}")
    if not part.shared_masks:
        extra = [masks[n].name for n in masks if n not in images and n not in excluded]
        if extra:
            report.problems.append(f"{len(extra)} mask(s) have no image in {img_dir}: {_names(extra)}")
    img_out.mkdir(parents=True, exist_ok=True)
    gt_out.mkdir(parents=True, exist_ok=True)
    for n in kept:
        if n in masks:
            _place(images[n], img_out / images[n].name, copy)
            _place(masks[n], gt_out / masks[n].name, copy)
            report.found += 1
    return report


def prepare(sources: dict[str, Path | None], out: Path, copy: bool = False) -> list[PartReport]:
    """Build ``out`` from ``{archive flag: folder or None}``; one report per archive split."""
    reports = []
    for archive in ARCHIVES:
        source = sources.get(archive.flag)
        for part in archive.parts:
            if source is None:
                reports.append(PartReport(part))
                continue
            base = out / "TrainDataset" if part.split == "train" else out / "TestDataset" / part.benchmark
            reports.append(build_part(source, part, base / "Imgs", base / "GT", copy))
    return reports


def format_report(reports: list[PartReport]) -> tuple[str, int]:
    """The count table and every difference; returns (text, number of differences)."""
    lines = [f"{'split':<6} {'benchmark':<10} {'found':>6} {'published':>9}  status"]
    differences = 0
    # Training parts first, then the papers' benchmark order.
    reports = sorted(reports, key=lambda r: (r.part.split != "train", BENCHMARKS.index(r.part.benchmark)))
    for r in reports:
        p = r.part
        if r.source is None:
            status, found = "not given (skipped)", "-"
        else:
            found = str(r.found)
            if r.found != p.published:
                status = f"DIFFERS by {r.found - p.published:+d}"
            else:
                status = "ok" if not r.problems else "count ok, files differ (below)"
            differences += status != "ok"
        lines.append(f"{p.split:<6} {p.benchmark:<10} {found:>6} {p.published:>9}  {status}")
    train = [r for r in reports if r.part.split == "train" and r.source is not None]
    if train:
        total, published = (
            sum(r.found for r in train),
            sum(r.part.published for r in reports if r.part.split == "train"),
        )
        lines.append(f"{'train':<6} {'total':<10} {total:>6} {published:>9}  (COD10K + CAMO)")
    for r in reports:
        if r.excluded:
            lines.append(
                f"{r.part.benchmark} {r.part.split}: {r.excluded} non-camouflaged images left out "
                f"(no '{CAMOUFLAGED_MARK}')"
            )
        for problem in r.problems:
            lines.append(f"{r.part.benchmark} {r.part.split}: {problem}")
    return "\n".join(lines), differences


def describe_registry() -> str:
    """Every registered data set with its field and published count. The SOD, DIS5K, polyp and
    video sets are used as they unpack (e.g. DIS5K/DIS-TE1/{im,gt}: data.root=.../DIS5K or its
    parent); this script builds the COD layout only."""
    lines = [f"{'field':<10} {'split':<6} {'name':<22} {'published':>9}"]
    for b in REGISTRY:
        count = f"{b.n_images:,}" if b.n_images is not None else "see paper"
        count = f"{b.n_sequences} seq." if b.n_sequences is not None else count
        lines.append(f"{b.field:<10} {b.split:<6} {b.name:<22} {count:>9}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--list-benchmarks",
        action="store_true",
        help="print every benchmark the framework knows (COD, SOD, DIS5K, polyp, video) with its published count",
    )
    p.add_argument("--downloads", type=Path, help="folder holding the unpacked archives (found by name)")
    for archive in ARCHIVES:
        p.add_argument(f"--{archive.flag}", type=Path, help=f"the unpacked {archive.parts[0].benchmark} folder")
    p.add_argument("--moca", type=Path, help="the unpacked MoCA-Mask folder")
    p.add_argument("--cad", type=Path, help="the unpacked CamouflagedAnimalDataset folder")
    p.add_argument("--out", type=Path, help="data root to build (then data.root=OUT)")
    p.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    args = p.parse_args(argv)
    if args.list_benchmarks:
        print(describe_registry())
        return 0
    if args.out is None:
        p.error("the following arguments are required: --out")
    sources: dict[str, Path | None] = {}
    for archive in ARCHIVES:
        given = getattr(args, archive.flag)
        if given is not None and not given.is_dir():
            p.error(f"--{archive.flag} '{given}' is not a folder")
        if given is None and args.downloads is not None:
            if not args.downloads.is_dir():
                p.error(f"--downloads '{args.downloads}' is not a folder")
            given = find_archive(args.downloads, archive)
        sources[archive.flag] = given
    for flag, names, _ in VIDEO_ARCHIVES:
        given = getattr(args, flag)
        sources[flag] = given or (find_video_archive(args.downloads, names) if args.downloads else None)
    if not any(sources.values()):
        p.error(
            "no archive found: give --downloads DIR holding COD10K-v3/, CAMO-V.1.0-CVIU2019/, CHAMELEON/, NC4K/ "
            "(as they unpack), or name them with --cod10k / --camo / --chameleon / --nc4k"
        )
    for flag, folder in sources.items():
        print(f"{flag:<10} {folder if folder else 'not found (skipped)'}")
    try:
        reports = prepare(sources, args.out, args.copy)
    except OSError as err:
        print(f"prepare_data.py: error: cannot write under '{args.out}': {err}", file=sys.stderr)
        return 1
    text, differences = format_report(reports)
    video_lines, video_differences = prepare_videos(sources, args.out)
    differences += video_differences
    print("\n".join([text, *video_lines]))
    print(
        f"wrote {args.out}/TrainDataset and {args.out}/TestDataset "
        f"({'copies' if args.copy else 'links'}); "
        + ("every given archive matches the published counts" if not differences else f"{differences} difference(s)")
    )
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
