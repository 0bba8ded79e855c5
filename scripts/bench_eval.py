"""Scoring speed: one process against a pool, on generated maps of a real benchmark's size.

    python scripts/bench_eval.py [--n 500] [--height 768] [--width 1024] [--workers 0] [--seed 0]

Writes ``--n`` random mask/map pairs (soft, noisy blobs; some empty masks) as PNGs to a
temporary folder, scores them with ``evaluation.score_folder`` using 1 worker and then
``--workers`` (0 = all cores), checks that both give identical numbers, and prints the
times and the speed-up. NC4K (4,121 maps) at ~0.15 s a map is ~10 minutes in one process.

Time on an otherwise idle machine: Linux's autogroup scheduler gives every terminal session
an equal share of the CPU, so while other sessions keep the cores busy, more worker
processes cannot get more CPU time and the speed-up reads ~1x.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.scoring import available_cores, score_folder


def make_pair(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 mask (0/255, ellipses; ~5% empty) and a plausible uint8 prediction map for it."""
    mask = np.zeros((h, w), np.uint8)
    if rng.random() > 0.05:
        for _ in range(rng.integers(1, 4)):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(w // 20, w // 4)), int(rng.integers(h // 20, h // 4)))
            cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    shift = np.float32([[1, 0, rng.normal(0, 15)], [0, 1, rng.normal(0, 15)]])
    soft = cv2.GaussianBlur(cv2.warpAffine(mask, shift, (w, h)).astype(np.float32), (0, 0), float(rng.uniform(3, 20)))
    noise = cv2.resize(rng.normal(0, 40, (h // 16, w // 16)).astype(np.float32), (w, h))
    return mask, np.clip(soft + noise, 0, 255).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--workers", type=int, default=0, help="pool size to compare with one process (0 = all cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workers = args.workers or available_cores()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = Path(tmp, "bench", "GT"), Path(tmp, "maps")
        gt_dir.mkdir(parents=True)
        pred_dir.mkdir()
        for i in range(args.n):
            mask, pred = make_pair(rng, args.height, args.width)
            cv2.imwrite(str(gt_dir / f"{i:05d}.png"), mask)
            cv2.imwrite(str(pred_dir / f"{i:05d}.png"), pred)
        times, results = {}, {}
        load = os.getloadavg()[0]
        for w in (1, workers):
            tic = time.perf_counter()
            results[w] = score_folder(pred_dir, gt_dir, workers=w)
            times[w] = time.perf_counter() - tic
    same = results[1] == results[workers]
    # Other processes on the machine take cores from the pool: the load average says how many.
    print(
        f"{args.n} maps at {args.height}x{args.width}, {available_cores()} cores available, "
        f"load average {load:.1f} at the start of the timings"
    )
    print(f"  1 process : {times[1]:7.1f} s  ({1000 * times[1] / args.n:.0f} ms/map)")
    print(
        f"  {workers} processes: {times[workers]:7.1f} s  ({1000 * times[workers] / args.n:.0f} ms/map, "
        f"pool start-up included)"
    )
    print(f"  speed-up  : {times[1] / times[workers]:.2f}x; identical results: {same}")
    if not same:
        sys.exit("results differ between worker counts")


if __name__ == "__main__":
    main()
