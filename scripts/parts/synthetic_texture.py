"""The generated sets' textures and shapes: an oriented random texture, its camouflaging variant, and an
object outline (scripts/make_synthetic_cod.py for images, scripts/parts/synthetic_video.py for sequences)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np


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


def smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
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
    phase = t.warp * smooth_noise(rng, h, w, size * 0.1)
    g1 = np.sin(
        2 * np.pi * (x * math.cos(t.theta) + y * math.sin(t.theta)) / t.wavelength + phase + rng.uniform(0, 2 * np.pi)
    )
    g2 = np.sin(
        2 * np.pi * (x * math.cos(t.theta2) + y * math.sin(t.theta2)) / t.wavelength2 + rng.uniform(0, 2 * np.pi)
    )
    v = g1 + t.weight2 * g2 + 0.35 * smooth_noise(rng, h, w, t.wavelength * 0.15)
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
