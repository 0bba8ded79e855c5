"""Paired image/mask transforms in numpy/OpenCV.

Training: horizontal flip, random scale-crop and small rotation are composed into ONE affine
matrix and applied by one ``cv2.warpAffine`` per array, then colour jitter on the image only.
Masks are interpolated bilinearly like the image and thresholded at 50%, so their edge sits where
the image's edge does (nearest neighbour is up to half a pixel off, and not mirror-symmetric);
``soft_masks`` keeps the interpolated grey levels instead, as the published E2Net trained.
``mask_interpolation="bicubic"`` resamples masks bicubically (saturated to 0..255), as SAM2-UNeXT's
PIL resize of its soft masks. Test: resize only. Outputs are float tensors in [0, 1]; normalisation
belongs to the model.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

MASK_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}  # data.mask_interpolation


def to_tensors(image: np.ndarray, mask: np.ndarray, soft_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB [H, W, 3] and uint8 mask [H, W] -> float32 [3, H, W] in [0, 1], [1, H, W] in {0, 1}
    (> 127), or with ``soft_mask`` the mask's grey levels / 255."""
    img = np.empty((3, *image.shape[:2]), np.float32)
    for c, plane in enumerate(cv2.split(image)):  # planar copy + scale in one pass per channel
        np.multiply(plane, np.float32(1 / 255), out=img[c], dtype=np.float32)
    msk = torch.from_numpy(mask)
    msk = msk.float().div_(255) if soft_mask else msk.gt(127).float()
    return torch.from_numpy(img), msk.unsqueeze(0)


def affine_matrix(
    height: int, width: int, size: int, crop_area: float, crop_xy: tuple[float, float], angle_deg: float, flip: bool
) -> np.ndarray:
    """2x3 matrix mapping source pixels to a ``size`` x ``size`` output.

    The crop keeps the image's aspect ratio (area ``crop_area`` of the image, top-left corner at
    ``crop_xy`` in units of the free room, each in [0, 1]), so training sees the same aspect
    distortion as the test-time resize. Rotation and flip act about the crop's centre.
    Pixel centres are at integer coordinates (OpenCV's convention).
    """
    k = math.sqrt(crop_area)
    cw, ch = width * k, height * k
    x0, y0 = crop_xy[0] * (width - cw), crop_xy[1] * (height - ch)
    return box_matrix((x0, y0, cw, ch), size, angle_deg, flip)


def side_crop_box(height: int, width: int, fraction: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The published E2Net's crop (its ``RandomCrop``), in whole pixels: per axis, a total cut
    drawn uniformly from {0, ..., int(fraction * side) - 1}, of which the left (top) side loses a
    uniform share in {0, ..., cut - 1} and the right (bottom) side the rest; so each axis loses on
    average about ``fraction / 2`` of its side and always less than ``fraction``, and the aspect
    ratio changes. -> (x0, y0, crop width, crop height).

    The width's cut is drawn first, then the height's, then the top's share and the left's, as
    published; an axis shorter than ``1 / fraction`` pixels is not cut (the published code fails).
    """

    def cut(side: int) -> int:
        n = int(side * fraction)
        return int(rng.integers(n)) if n > 0 else 0

    cut_w, cut_h = cut(width), cut(height)
    top = int(rng.integers(cut_h)) if cut_h else 0
    left = int(rng.integers(cut_w)) if cut_w else 0
    return left, top, width - cut_w, height - cut_h


def box_matrix(box: tuple[float, ...], size: int, angle_deg: float, flip: bool) -> np.ndarray:
    """2x3 matrix mapping the source box (x0, y0, width, height) to a ``size`` x ``size`` output,
    rotated by ``angle_deg`` and flipped about the box's centre."""
    x0, y0, cw, ch = box
    centre_src = np.array([x0 + cw / 2 - 0.5, y0 + ch / 2 - 0.5])
    centre_dst = np.array([(size - 1) / 2, (size - 1) / 2])
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    a = np.diag([size / cw, size / ch]) @ np.diag([-1.0 if flip else 1.0, 1.0]) @ rot
    return np.hstack([a, (centre_dst - a @ centre_src)[:, None]]).astype(np.float32)


def upside_down(m: np.ndarray, size: int) -> np.ndarray:
    """The 2x3 warp ``m`` followed by a vertical flip of its ``size`` x ``size`` output."""
    flip = np.array([[1, 0, 0], [0, -1, size - 1]], np.float32)
    return flip @ np.vstack([m, np.array([0, 0, 1], np.float32)])


def color_jitter(image: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Brightness, contrast and saturation ``factors`` (b, c, s); uint8 RGB in and out."""
    b, c, s = (float(f) for f in factors)
    r, g, bl = cv2.mean(image)[:3]
    mean = (0.299 * r + 0.587 * g + 0.114 * bl) * b  # mean grey level after the brightness change
    # brightness then contrast about the mean grey level, folded into one saturating pass
    out = cv2.addWeighted(image, b * c, image, 0.0, (1.0 - c) * mean)
    grey3 = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(out, s, grey3, 1.0 - s, 0.0)


class TrainTransform:
    """Random flip + scale-crop + rotation (one warp), colour jitter; see :func:`affine_matrix`.
    ``vflip``: the probability of an upside-down flip, drawn after the rest (:func:`upside_down`).

    ``side_crop`` > 0 replaces the aspect-keeping area crop of ``scale`` by the published E2Net's
    crop: per axis, a total cut of less than that fraction of the side, split at random between its
    two sides (:func:`side_crop_box`). ``soft_masks``: see :func:`to_tensors`. ``reduced_decode=False``
    asks for every file at full size (:meth:`needed_side` 0), as the published E2Net decoded them.
    """

    def __init__(
        self,
        hflip: float = 0.5,
        rotate: float = 10.0,
        scale: tuple[float, float] = (0.75, 1.0),
        color_jitter: float = 0.2,
        side_crop: float = 0.0,
        soft_masks: bool = False,
        reduced_decode: bool = True,
        vflip: float = 0.0,
        mask_interpolation: str = "bilinear",
    ) -> None:
        self.hflip, self.rotate, self.scale, self.jitter = hflip, rotate, tuple(scale), color_jitter
        self.side_crop, self.soft_masks, self.reduced_decode = side_crop, soft_masks, reduced_decode
        self.vflip, self.mask_flag = vflip, MASK_INTERPOLATION[mask_interpolation]

    def needed_side(self, size: int) -> float:
        """Short side the decoded image must keep so that the smallest crop is not upsampled
        (0: the full decoded size)."""
        if not self.reduced_decode:
            return 0.0
        if self.side_crop > 0:
            return size / (1 - self.side_crop)
        return size / math.sqrt(self.scale[0])

    def draw(
        self, height: int, width: int, size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One sample's random parameters: the 2x3 warp of a ``height`` x ``width`` source onto
        ``size`` x ``size`` and the colour-jitter factors (None without jitter). The device path
        (``data.augment_on=device``) draws through here too, so both paths see the same augmentations."""
        if self.side_crop > 0:
            box = side_crop_box(height, width, self.side_crop, rng)
            m = box_matrix(box, size, rng.uniform(-self.rotate, self.rotate), bool(rng.random() < self.hflip))
        else:
            m = affine_matrix(
                height,
                width,
                size,
                crop_area=rng.uniform(*self.scale),
                crop_xy=tuple(rng.random(2)),
                angle_deg=rng.uniform(-self.rotate, self.rotate),
                flip=bool(rng.random() < self.hflip),
            )
        if self.vflip > 0 and rng.random() < self.vflip:  # drawn last: without it, the draws stay as they were
            m = upside_down(m, size)
        factors = 1.0 + rng.uniform(-self.jitter, self.jitter, size=3) if self.jitter > 0 else None
        return m, factors

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 RGB [H, W, 3], uint8 [H, W] (same H, W) -> [3, size, size], [1, size, size]."""
        h, w = mask.shape
        m, factors = self.draw(h, w, size, rng)
        # replicated borders: no dark rim when upsampling small images, and rotated corners are
        # smeared edge pixels rather than black wedges (reflection costs 1.4x more here)
        image = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mask = cv2.warpAffine(mask, m, (size, size), flags=self.mask_flag, borderMode=cv2.BORDER_REPLICATE)
        if factors is not None:
            image = color_jitter(image, factors)
        return to_tensors(image, mask, self.soft_masks)


class TestTransform:
    """Resize to ``size`` x ``size`` (bilinear, as in training; the mask is thresholded after,
    unless ``soft_masks``); ``reduced_decode``: see :class:`TrainTransform`."""

    def __init__(
        self, soft_masks: bool = False, reduced_decode: bool = True, mask_interpolation: str = "bilinear"
    ) -> None:
        self.soft_masks, self.reduced_decode = soft_masks, reduced_decode
        self.mask_flag = MASK_INTERPOLATION[mask_interpolation]

    def needed_side(self, size: int) -> float:
        return float(size) if self.reduced_decode else 0.0

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (size, size), interpolation=self.mask_flag)
        return to_tensors(image, mask, self.soft_masks)

    def image(self, image: np.ndarray, size: int) -> torch.Tensor:
        """The image part of ``__call__`` alone (no mask): float32 [3, size, size]."""
        return self(image, np.zeros(image.shape[:2], np.uint8), size)[0]
