"""Generated video COD sets: camouflaged objects moving over a moving background, in MoCA-Mask's and
CAD's layouts (``python scripts/make_synthetic_cod.py --video``; the tests' and the video demo's data).

Each sequence pans over one texture of :mod:`scripts.make_synthetic_cod` while an object cut from the same
texture family drifts across it: still, a frame is as hard as a generated image; over frames the object
moves against its background, the cue the temporal module can use. A sequence depends only on
(seed, split, index). Masks on every ``every``-th frame (MoCA-Mask: 00000, 00005, ...; CAD: 001, 006, ...).

    OUT/MoCA-Mask/{TrainDataset_per_sq,TestDataset_per_sq}/synth_NN/{Imgs/NNNNN.jpg, GT/NNNNN.png}
    OUT/CamouflagedAnimalDataset/synthNN/{frames/synthNN_NNN.png, groundtruth/NNN_gt.png}   (with cad)
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np

from scripts.parts.synthetic_texture import random_shape, random_texture, render, shifted


def make_sequence(
    seed: int, split: int, index: int, frames: int, size: int, difficulty: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``frames`` (RGB uint8 [H, W, 3], mask uint8 [H, W] {0, 255}) of one sequence, H = 3/4 size, W = size."""
    rng = np.random.default_rng((seed, 100 + split, index))
    h, w = size * 3 // 4, size
    margin = size // 4
    bg = random_texture(rng, size)
    canvas = render(bg, rng, h + 2 * margin, w + 2 * margin, size)
    obj = render(shifted(bg, rng, difficulty), rng, h, w, size)
    shape = random_shape(rng, h, w).astype(np.float32) / 255
    alpha = cv2.GaussianBlur(shape, (0, 0), max(0.6, size / 256))
    pan = rng.uniform(-1, 1, 2) * margin / max(frames, 1)  # camera: pixels per frame
    drift = rng.uniform(-1, 1, 2) * size * 0.12 / max(frames, 1)  # the object against the background
    out = []
    for t in range(frames):
        cx, cy = (margin + pan * t).round().astype(int)
        image = canvas[cy : cy + h, cx : cx + w].copy()
        m = np.float32([[1, 0, drift[0] * t], [0, 1, drift[1] * t]])
        moved = cv2.warpAffine(alpha, m, (w, h))[..., None]
        image = moved * cv2.warpAffine(obj, m, (w, h), borderMode=cv2.BORDER_REFLECT) + (1 - moved) * image
        image += rng.uniform(2, 5) * rng.standard_normal(image.shape, dtype=np.float32)  # grain, new each frame
        mask = np.where(cv2.warpAffine(shape, m, (w, h)) > 0.5, 255, 0).astype(np.uint8)
        out.append((np.clip(image, 0, 255).astype(np.uint8), mask))
    return out


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write {path}")


def _remove_ours(folder: Path) -> None:
    for seq in folder.iterdir() if folder.is_dir() else []:
        if seq.is_dir() and re.fullmatch(r"synth_?\d{2}", seq.name):
            shutil.rmtree(seq)


def generate_video(
    out: str | Path,
    n_train: int,
    n_test: int,
    frames: int = 20,
    size: int = 128,
    seed: int = 0,
    difficulty: float = 0.5,
    every: int = 5,
    cad: bool = True,
) -> None:
    """Write ``n_train`` training and ``n_test`` test sequences of ``frames`` frames in MoCA-Mask's layout
    (and, with ``cad``, ``n_test`` other test sequences in CAD's); this generator's earlier sequences there
    (``synth_NN``, ``synthNN``) are replaced, nothing else is touched."""
    out = Path(out)
    moca = out / "MoCA-Mask"
    for split, sub, n in ((0, "TrainDataset_per_sq", n_train), (1, "TestDataset_per_sq", n_test)):
        _remove_ours(moca / sub)
        for i in range(n):
            for t, (image, mask) in enumerate(make_sequence(seed, split, i, frames, size, difficulty)):
                seq = moca / sub / f"synth_{i:02d}"
                _write(seq / "Imgs" / f"{t:05d}.jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                if t % every == 0:
                    _write(seq / "GT" / f"{t:05d}.png", mask)
    if not cad:
        return
    _remove_ours(out / "CamouflagedAnimalDataset")
    for i in range(n_test):
        name = f"synth{i:02d}"
        seq = out / "CamouflagedAnimalDataset" / name
        for t, (image, mask) in enumerate(make_sequence(seed, 2, i, frames, size, difficulty), start=1):
            _write(seq / "frames" / f"{name}_{t:03d}.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if (t - 1) % every == 0:
                _write(seq / "groundtruth" / f"{t:03d}_gt.png", mask)
