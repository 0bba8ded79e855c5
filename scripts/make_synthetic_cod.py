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
objects in MoCA-Mask's and CAD's layouts instead (scripts/synthetic_video.py).

Calibration (difficulty 0.5, 600 train / 100 test at --size 256, trained and scored at 128 px):
an untrained network scores S-measure ~0.37; a 16-channel 4-level U-Net reaches 0.89 after 280
steps of batch 16 and 0.92 after 560.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

TEST_SET = "SynthCOD"


@dataclass(frozen=True)
class Texture:
    theta: float  # radians, main grating
    wavelength: float  # pixels
    theta2: float
    wavelength2: float
    weight2: float
    warp: float  # phase wobble amplitude (radians)
    dark: np.ndarray  # RGB float [3]
    light: np.ndarray


def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit std; [h, w] float32.

    Wide filters run on a grid ``k`` times coarser, then upsample: same look, a fraction of the cost.
    """
    k = max(1, int(sigma / 2))
    small = rng.standard_normal((h // k + 2, w // k + 2), dtype=np.float32)
    n = cv2.GaussianBlur(small, (0, 0), max(sigma / k, 0.5))
    if k > 1:
        n = cv2.resize(n, (n.shape[1] * k, n.shape[0] * k), interpolation=cv2.INTER_LINEAR)
    n = n[:h, :w]
    return n / (n.std() + 1e-6)


def random_texture(rng: np.random.Generator, size: int) -> Texture:
    base = rng.uniform(40, 200, 3)
    contrast = rng.uniform(35, 80) * rng.dirichlet([4, 4, 4]) * 3
    return Texture(
        theta=rng.uniform(0, math.pi),
        wavelength=size * rng.uniform(0.06, 0.08),
        theta2=rng.uniform(0, math.pi),
        wavelength2=size * rng.uniform(0.05, 0.1),
        weight2=rng.uniform(0.25, 0.5),
        warp=rng.uniform(0.2, 0.6),
        dark=np.clip(base - contrast / 2, 0, 255),
        light=np.clip(base + contrast / 2, 0, 255),
    )


def shifted(t: Texture, rng: np.random.Generator, difficulty: float) -> Texture:
    """The object's texture: same family, shifted orientation, finer grain and shifted colour.

    The grain is always finer than the background's (whose wavelength range is narrow), so there is
    one cue a small network can read locally; orientation and colour shifts are relative cues.
    """
    lerp = lambda easy, hard: easy + (hard - easy) * difficulty  # noqa: E731
    dtheta = math.radians(rng.uniform(lerp(55, 20), lerp(90, 45))) * rng.choice([-1, 1])
    ratio = 1 / rng.uniform(lerp(1.7, 1.2), lerp(2.0, 1.4))
    shift = rng.standard_normal(3)
    shift *= rng.uniform(lerp(15, 4), lerp(28, 12)) / np.linalg.norm(shift)
    return replace(
        t,
        theta=t.theta + dtheta,
        wavelength=t.wavelength * ratio,
        theta2=t.theta2 + dtheta,
        wavelength2=t.wavelength2 * ratio,
        dark=np.clip(t.dark + shift, 0, 255),
        light=np.clip(t.light + shift, 0, 255),
    )


def render(t: Texture, rng: np.random.Generator, h: int, w: int, size: int) -> np.ndarray:
    """[h, w, 3] float32 RGB in about [0, 255]."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = t.warp * _smooth_noise(rng, h, w, size * 0.1)
    g1 = np.sin(
        2 * np.pi * (x * math.cos(t.theta) + y * math.sin(t.theta)) / t.wavelength + phase + rng.uniform(0, 2 * np.pi)
    )
    g2 = np.sin(
        2 * np.pi * (x * math.cos(t.theta2) + y * math.sin(t.theta2)) / t.wavelength2 + rng.uniform(0, 2 * np.pi)
    )
    v = g1 + t.weight2 * g2 + 0.35 * _smooth_noise(rng, h, w, t.wavelength * 0.15)
    v = np.clip(v / (1.0 + t.weight2) * 0.5 + 0.5, 0, 1)[..., None]
    return t.dark + v * (t.light - t.dark)


def random_shape(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 [h, w] {0, 255}: one ellipse / blob / polygon / worm, maybe with thin limbs."""
    mask = np.zeros((h, w), np.uint8)
    area = math.exp(rng.uniform(math.log(0.04), math.log(0.22))) * h * w
    r = math.sqrt(area / math.pi)
    cx, cy = rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.15 * h, 0.85 * h)
    kind = rng.choice(["ellipse", "blob", "polygon", "worm"], p=[0.3, 0.3, 0.25, 0.15])
    if kind == "ellipse":
        q = rng.uniform(0.4, 1.0)
        axes = (int(r / math.sqrt(q)), max(2, int(r * math.sqrt(q))))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 255, -1, cv2.LINE_AA)
    elif kind in ("blob", "polygon"):
        n = 64 if kind == "blob" else int(rng.integers(5, 10))
        phi = np.sort(rng.uniform(0, 2 * np.pi, n)) if kind == "polygon" else np.linspace(0, 2 * np.pi, n, False)
        if kind == "blob":
            rad = np.ones(n)
            for k in range(2, 6):
                rad += rng.uniform(0, 0.35 / k * 2) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
        else:
            rad = rng.uniform(0.6, 1.25, n)
        rad *= r
        pts = np.stack([cx + rad * np.cos(phi), cy + rad * np.sin(phi)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255, cv2.LINE_AA)
    else:  # worm: a thick smooth curve
        n, heading = 24, rng.uniform(0, 2 * np.pi)
        turn = np.cumsum(rng.normal(0, 0.25, n))
        step = 3.2 * r / n
        xs = cx + np.cumsum(step * np.cos(heading + turn)) - 1.6 * r * math.cos(heading)
        ys = cy + np.cumsum(step * np.sin(heading + turn)) - 1.6 * r * math.sin(heading)
        pts = np.round(np.stack([xs, ys], 1)).astype(np.int32)
        cv2.polylines(mask, [pts], False, 255, max(3, int(0.55 * r)), cv2.LINE_AA)
    if rng.random() < 0.35:  # legs / antennae / fins
        for _ in range(int(rng.integers(2, 7))):
            a = rng.uniform(0, 2 * np.pi)
            length = r * rng.uniform(1.2, 2.0)
            end = (int(cx + length * math.cos(a)), int(cy + length * math.sin(a)))
            cv2.line(mask, (int(cx), int(cy)), end, 255, max(3, int(0.15 * r)), cv2.LINE_AA)
    return np.where(mask > 127, 255, 0).astype(np.uint8)


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
    drift = np.stack([_smooth_noise(rng, h, w, size * 0.2) for _ in range(3)], -1)  # uneven light/colour
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
                    "MoCA-Mask's and CAD's layouts, scripts/synthetic_video.py")  # fmt: skip
    ap.add_argument("--frames", type=int, default=20, help="with --video: frames per sequence")
    args = ap.parse_args(argv)
    if args.train < 0 or args.test < 0 or args.size < 32 or not 0 <= args.difficulty <= 1 or args.workers < 1:
        ap.error("need --train/--test >= 0, --size >= 32, --difficulty in [0, 1], --workers >= 1")
    t0 = time.perf_counter()
    if args.video:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from scripts.synthetic_video import generate_video

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
