"""Count and check a data root: every split and benchmark, every bad file.

    python scripts/check_dataset.py ROOT [--fast] [key=value ...]

Uses the same discovery and checks as training (``data.train``, ``data.test_sets``,
``data.val_fraction`` / ``data.val_set`` and ``train.seed`` may be overridden), and by default
also decodes every pixel of every file (``--fast``: headers and end markers only). Prints the
counts per split and benchmark, then every problem; exits 1 if there were problems, else 0.
Notes (e.g. a mask whose size differs from its image, or a registered benchmark whose count
differs from the published one, cod_benchmarks.REGISTRY) are printed but do not fail the check.
DIS5K is found as it unpacks (ROOT/DIS5K/DIS-TE1/{im,gt}, or ROOT is the DIS5K folder). Video sets
(ROOT/MoCA-Mask/{TrainDataset_per_sq,TestDataset_per_sq}, ROOT/CamouflagedAnimalDataset) are counted in
sequences, frames and annotated frames, the sequences against the published counts; a root holding
only video sets is checked as such.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cod_benchmarks import benchmark_info  # noqa: E402
from config import ConfigError, load_config  # noqa: E402
from datasets.build import cod10k_camouflaged, scan, split_train_val  # noqa: E402
from datasets.layout import find_benchmark_dirs, resolve_train_dirs  # noqa: E402
from datasets.problems import BadFile, DatasetError, Problem, format_problems  # noqa: E402
from datasets.reading import probe, verify_decode  # noqa: E402
from datasets.video import MOCA_DIR, MOCA_TRAIN, VIDEO_TEST_DIRS, find_sequences, is_video_folder  # noqa: E402

VIDEO_SETS = {"MoCA-Mask train": Path(MOCA_DIR) / MOCA_TRAIN, **VIDEO_TEST_DIRS}


def check_videos(root: Path, max_pixels: int, full: bool) -> tuple[list[tuple[str, int]], list, list]:
    """(rows of (set, annotated frames), problems, notes) for the video sets under ``root``."""
    rows, problems, notes = [], [], []
    for name, rel in VIDEO_SETS.items():
        if not is_video_folder(root / rel):
            continue
        sequences, bad = find_sequences(root / rel)
        problems += bad
        for path in (f for s in sequences for f in (*s.frames, *s.masks.values())):
            try:
                probe(path, max_pixels)
                if full:
                    verify_decode(path)
            except BadFile as err:
                problems.append(Problem(str(path), str(err)))
        frames, annotated = sum(len(s.frames) for s in sequences), sum(len(s.masks) for s in sequences)
        rows.append((f"video {name} ({len(sequences)} sequences, {frames} frames; annotated)", annotated))
        published = benchmark_info(name).n_sequences
        if published is not None and len(sequences) != published:
            notes.append(Problem(str(root / rel), f"{len(sequences)} sequences; the published {name} has {published}"))
    return rows, problems, notes


def check(root: str | Path, overrides: list[str], full: bool = True) -> tuple[list[tuple[str, int]], list, list]:
    """(rows of (split, count), problems, notes) for the data root ``root``."""
    cfg = load_config(None, [f"data.root={root}", *overrides])
    d, root = cfg.data, Path(root)
    rows, problems, notes = check_videos(root, int(d.max_pixels), full)
    if rows and not (root / d.train[0]).is_dir():  # a root of video sets only
        return rows, problems, notes
    dirs = resolve_train_dirs(root, list(d.train))
    samples, bad, odd = scan(dirs, int(d.max_pixels), verify=full)
    problems, notes = problems + bad, notes + odd
    if d.val_set:
        train, val = samples, None
    else:
        train, val = split_train_val(samples, float(d.val_fraction), int(cfg.train.seed), root)
    rows.append((f"train ({', '.join(str(i.parent.relative_to(root)) for i, _ in dirs)})", len(train)))
    if val is not None:
        rows.append((f"val (seeded {d.val_fraction:g} of the training images)", len(val)))
    try:
        benches = find_benchmark_dirs(root, list(d.test_sets) or None)
    except DatasetError as err:
        if d.test_sets or d.val_set:
            raise
        benches = {}
        notes.append(Problem(str(root), f"no test benchmarks: {err}"))
    for name, bdirs in benches.items():
        found, bad, odd = scan([bdirs], int(d.max_pixels), verify=full)
        found, cam = cod10k_camouflaged(name, found)
        problems, notes = problems + bad, notes + odd + cam
        rows.append(
            (f"test {name}" + (" (also val: data.val_set)" if name.lower() == d.val_set.lower() else ""), len(found))
        )
        info = benchmark_info(name)
        if info and info.n_images is not None and len(found) != info.n_images:
            notes.append(Problem(str(bdirs[1]), f"{len(found)} images; the published {info.name} has {info.n_images}"))
    return rows, problems, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="data root holding TrainDataset/ and TestDataset/")
    ap.add_argument("--fast", action="store_true", help="skip the full decode (headers and end markers only)")
    ap.add_argument(
        "overrides",
        nargs="*",
        help="config overrides, e.g. data.train=[TrainDataset] (every key: config_schema.py, README 'Config reference')",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # this script prints its own report
    try:
        rows, problems, notes = check(args.root, args.overrides, full=not args.fast)
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    width = max(len(r[0]) for r in rows)
    print(f"{'split':<{width}}  images")
    for name, n in rows:
        print(f"{name:<{width}}  {n:>6}")
    if notes:
        print(f"\n{len(notes)} note(s):\n{format_problems(notes)}")
    if problems:
        print(
            f"\n{len(problems)} problem(s) (these files are skipped by training/testing, "
            f"or fail it with data.strict=true):\n{format_problems(problems)}"
        )
        return 1
    print("\nno problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
