"""The video sets for prepare_data.py: MoCA-Mask's and CAD's folders linked under OUT as they unpack,
their sequences counted against the published counts (cod_benchmarks.REGISTRY)."""

from __future__ import annotations

import os
from pathlib import Path

from cod_benchmarks import REGISTRY
from datasets.video import CAD_DIR, MOCA_DIR, MOCA_TEST, MOCA_TRAIN, find_sequences

# Video archives: (flag, folder names as unpacked (lower case, prefix match), {link under OUT: where in the archive}).
VIDEO_ARCHIVES = (
    ("moca", ("moca-mask", "moca_mask"), {f"{MOCA_DIR}/{s}": (s, f"MoCA_Video/{s}") for s in (MOCA_TRAIN, MOCA_TEST)}),
    ("cad", ("camouflagedanimaldataset", "cad"), {CAD_DIR: (".",)}),
)
PUBLISHED_SEQUENCES = {
    f"{MOCA_DIR}/{MOCA_TRAIN}": "MoCA-Mask train",
    f"{MOCA_DIR}/{MOCA_TEST}": "MoCA-Mask",
    CAD_DIR: "CAD",
}


def find_video_archive(downloads: Path, names: tuple[str, ...]) -> Path | None:
    """The folder one or two levels under ``downloads`` whose name starts with one of ``names`` (lower case)."""
    levels = [downloads, *(p for p in sorted(downloads.iterdir()) if p.is_dir())]
    hits = [q for lv in levels for q in sorted(lv.iterdir()) if q.is_dir() and q.name.lower().startswith(names)]
    return hits[0] if hits else None


def prepare_videos(sources: dict[str, Path | None], out: Path) -> tuple[list[str], int]:
    """Link each given video archive's sequence folders under ``out``; (report lines, differences)."""
    lines, differences = [], 0
    for flag, _, links in VIDEO_ARCHIVES:
        source = sources.get(flag)
        if source is None:
            continue
        for rel, candidates in links.items():
            found = next((source / c for c in candidates if (source / c).is_dir()), None)
            if found is None:
                lines.append(f"{rel}: not found in {source} (looked for {' or '.join(candidates)})")
                differences += 1
                continue
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink():
                dst.unlink()
            if not dst.exists():
                os.symlink(found.resolve(), dst)
            n = len(find_sequences(found)[0])
            published = next(b.n_sequences for b in REGISTRY if b.name == PUBLISHED_SEQUENCES[rel])
            differences += n != published
            lines.append(f"{rel}: {n} sequences (published {published}){'' if n == published else '  DIFFERS'}")
    return lines, differences
