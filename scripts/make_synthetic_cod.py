"""Write a generated camouflage set in the field's layout (the demo's and the tests' data).

    python scripts/make_synthetic_cod.py --out data/SynthCOD --train 600 --test 100 --size 256 --seed 0

    python scripts/make_synthetic_cod.py --video --out data/SynthVCOD --train 12 --test 4 --frames 30 --size 128

writes ``OUT/TrainDataset/{Imgs,GT}`` and ``OUT/TestDataset/SynthCOD/{Imgs,GT}``: JPEG images,
PNG masks (0/255). Each image is a random oriented texture (two sinusoid gratings with a wavy
phase, filtered noise, a two-colour palette, slow colour drift, grain); each object is cut from
the same texture family with small shifts in orientation, grain (always finer) and colour, and
pasted with a soft edge. Shapes: ellipses, Fourier blobs, star polygons, worms, some with thin
limbs; 0 to 3 objects per image (about 8% empty, ~10-15% of the area on average); sizes and
aspect ratios vary. ``--difficulty`` (0 easy .. 1 hard) scales the object/background
differences. Every image depends only on (seed, split, index); generating again into the same
folder replaces this script's earlier files there (and only those). ``--video`` writes moving
objects in MoCA-Mask's and CAD's layouts instead (scripts/parts/synthetic_video.py).

Calibration (difficulty 0.5, 600 train / 100 test at --size 256, trained and scored at 128 px):
an untrained network scores S-measure ~0.37; a 16-channel 4-level U-Net reaches 0.89 after 280
steps of batch 16 and 0.92 after 560.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.parts.synthetic_texture import random_shape, random_texture, render, shifted, smooth_noise  # noqa: E402

TEST_SET = "SynthCOD"


def make_image(
    seed: int, split: int, index: int, size: int, difficulty: float, shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [H, W, 3], mask uint8 [H, W] {0, 255}) for one image; depends only on the arguments.

    ``shape`` = (H, W) fixes the image size (benchmarks); by default it varies around ``size``.
    """
    rng = np.random.default_rng((seed, split, index))
    long_side = int(size * rng.uniform(0.85, 1.15))
    short_side = int(long_side * rng.uniform(0.65, 1.0))
    h, w = (long_side, short_side) if rng.random() < 0.35 else (short_side, long_side)
    if shape is not None:
        h, w = shape
    bg = random_texture(rng, size)
    image = render(bg, rng, h, w, size)
    gt = np.zeros((h, w), np.uint8)
    n_obj = int(rng.choice([0, 1, 2, 3], p=[0.08, 0.6, 0.25, 0.07]))
    for _ in range(n_obj):
        shape = random_shape(rng, h, w)
        ys, xs = np.nonzero(shape)
        if ys.size == 0:
            continue
        pad = int(0.05 * size) + 4
        y0, y1 = max(0, ys.min() - pad), min(h, ys.max() + pad + 1)
        x0, x1 = max(0, xs.min() - pad), min(w, xs.max() + pad + 1)
        obj = render(shifted(bg, rng, difficulty), rng, y1 - y0, x1 - x0, size)
        obj *= 1.0 + rng.uniform(-0.06, 0.06) * np.linspace(-1, 1, x1 - x0, dtype=np.float32)[None, :, None]
        sigma = rng.uniform(0.6, 1.5) * size / 256  # soft boundary
        alpha = cv2.GaussianBlur(shape[y0:y1, x0:x1].astype(np.float32) / 255, (0, 0), sigma)[..., None]
        image[y0:y1, x0:x1] = alpha * obj + (1 - alpha) * image[y0:y1, x0:x1]
        gt |= shape
    drift = np.stack([smooth_noise(rng, h, w, size * 0.2) for _ in range(3)], -1)  # uneven light/colour
    image += rng.uniform(3, 8) * drift
    image += rng.uniform(2, 6) * rng.standard_normal(image.shape, dtype=np.float32)  # sensor grain
    return np.clip(image, 0, 255).astype(np.uint8), gt


def _write(job: tuple) -> None:
    seed, split, index, size, difficulty, img_path, gt_path = job
    image, gt = make_image(seed, split, index, size, difficulty)
    quality = 85 + (index * 7) % 11
    cv2.imwrite(img_path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    cv2.imwrite(gt_path, gt, [cv2.IMWRITE_PNG_COMPRESSION, 9])  # like most tools write masks


def generate(
    out: str | Path,
    n_train: int,
    n_test: int,
    size: int = 256,
    seed: int = 0,
    difficulty: float = 0.5,
    workers: int = 1,
) -> None:
    """Write the set under ``out`` (see the module docstring)."""
    out = Path(out)
    jobs, stale = [], []
    for split, folder, n, prefix in (
        (0, out / "TrainDataset", n_train, "synth_train"),
        (1, out / "TestDataset" / TEST_SET, n_test, "synth_test"),
    ):
        if n <= 0:
            continue
        (folder / "Imgs").mkdir(parents=True, exist_ok=True)
        (folder / "GT").mkdir(parents=True, exist_ok=True)
        ours = re.compile(rf"{prefix}_(\d{{5}})\.(jpg|png)")
        stale += [
            p
            for sub in ("Imgs", "GT")
            for p in (folder / sub).iterdir()
            if (m := ours.fullmatch(p.name)) and int(m.group(1)) >= n
        ]  # from an earlier, larger run
        for i in range(n):
            stem = f"{prefix}_{i:05d}"
            jobs.append(
                (
                    seed,
                    split,
                    i,
                    size,
                    difficulty,
                    str(folder / "Imgs" / f"{stem}.jpg"),
                    str(folder / "GT" / f"{stem}.png"),
                )
            )
    for p in stale:
        p.unlink()
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write, jobs, chunksize=16))
    else:
        for job in jobs:
            _write(job)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (becomes data.root)")
    ap.add_argument("--train", type=int, default=600, help="training images")
    ap.add_argument("--test", type=int, default=100, help=f"test images (benchmark '{TEST_SET}')")
    ap.add_argument("--size", type=int, default=256, help="nominal long side (varies +-15%%; aspect 0.65-1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--difficulty", type=float, default=0.5, help="0 (easy) .. 1 (hard)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes")
    ap.add_argument("--video", action="store_true", help="sequences instead (--train/--test count them): "
                    "MoCA-Mask's and CAD's layouts, scripts/parts/synthetic_video.py")  # fmt: skip
    ap.add_argument("--frames", type=int, default=20, help="with --video: frames per sequence")
    args = ap.parse_args(argv)
    if args.train < 0 or args.test < 0 or args.size < 32 or not 0 <= args.difficulty <= 1 or args.workers < 1:
        ap.error("need --train/--test >= 0, --size >= 32, --difficulty in [0, 1], --workers >= 1")
    t0 = time.perf_counter()
    if args.video:
        from scripts.parts.synthetic_video import generate_video

        generate_video(args.out, args.train, args.test, args.frames, args.size, args.seed, args.difficulty)
        print(f"wrote {args.train} training and {args.test} test sequences to {args.out}")
        return 0
    generate(args.out, args.train, args.test, args.size, args.seed, args.difficulty, args.workers)
    print(
        f"wrote {args.train} training and {args.test} test images ({TEST_SET}) to {args.out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
