"""``data.augment_on=device``: training images decoded once into memory, augmented on the device.

Worker processes decode and warp about 160 images/s per core (docs/performance.md), while a frozen
ViT-B on a modern GPU consumes thousands. On this path every training pair is decoded once at
start-up (from data.cache's pre-resized copies when ``data.cache=true``), resized to one square
side (``TrainTransform.needed_side`` of the largest training size, so the smallest random crop is
still not upsampled along either axis) and kept in memory as uint8. A batch is then those uint8 tensors plus each
sample's parameters, drawn by ``TrainTransform.draw`` from the same ``(seed, epoch, index)``
generator as the worker path: both paths see the same augmentations. :func:`training_inputs`
moves the uint8 batch to the device, warps image and mask together with one ``grid_sample``
(bilinear, replicated border: as ``cv2.warpAffine`` in the worker path; the mask thresholded at
50 %) and applies the worker path's colour jitter there.

Memory: 4 x side² bytes per image in each training process (0.79 MB at side 444, for 384 px and
data.scale [0.75, 1]: 3.2 GB for the 4,040 COD training images); forked DataLoader workers share it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .dataset import Key, Sample
from .problems import BadFile, Problem, format_problems
from .reading import decode_image, decode_mask, reduction
from .transforms import TrainTransform

log = logging.getLogger(__name__)

# ITU-R 601 luma, as cv2.COLOR_RGB2GRAY in the worker path's colour jitter
_LUMA = (0.299, 0.587, 0.114)


@contextlib.contextmanager
def opencv_pool_stopped() -> Iterator[None]:
    """Run OpenCV single-threaded inside, and leave its thread pool stopped after.

    A DataLoader worker forked while OpenCV's pool is running hangs in ``cv2.setNumThreads``
    (which ``datasets.loader.seed_worker`` calls); setting the count in the parent stops the pool.
    """
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _decode_square(s: Sample, side: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """uint8 [3, side, side], [1, side, side] and the decoded (h, w) the warp is drawn for."""
    image = decode_image(s.image_path, reduction(s.height, s.width, side))
    if (s.mask_height, s.mask_width) == (s.height, s.width):
        mask = decode_mask(s.mask_path, reduction(s.height, s.width, side))
    else:
        mask = decode_mask(s.mask_path)
    h, w = image.shape[:2]
    if mask.shape != (h, w):  # as CODDataset.load: nearest keeps the mask binary
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    # The squash to a square (area-averaged) is undone by the warp: warp_theta maps through it.
    image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (side, side), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image.transpose(2, 0, 1)), mask[None], (h, w)


def warp_theta(matrix: np.ndarray, height: int, width: int, side: int, size: int) -> np.ndarray:
    """``affine_grid`` theta [2, 3] (align_corners=False) of the warp ``matrix``.

    ``matrix`` maps pixels of a ``height`` x ``width`` image onto a ``size`` x ``size`` output
    (OpenCV's convention: pixel centres at integer coordinates); the theta samples that warp from
    the same image squashed to ``side`` x ``side``.
    """
    m = np.vstack([matrix.astype(np.float64), [0.0, 0.0, 1.0]])
    out_px = np.array([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]])  # normalised -> px
    squash = np.array(
        [[side / width, 0, side / width / 2 - 0.5], [0, side / height, side / height / 2 - 0.5], [0, 0, 1]]
    )
    src_norm = np.array([[2 / side, 0, 1 / side - 1], [0, 2 / side, 1 / side - 1], [0, 0, 1]])  # px -> normalised
    return (src_norm @ squash @ np.linalg.inv(m) @ out_px)[:2].astype(np.float32)


class DecodedTrainSet(Dataset):
    """The training pairs as uint8 squares in memory; items carry their augmentation parameters.

    An item (key ``(index, size, epoch)`` as :class:`datasets.CODDataset`) is ``{"image": uint8
    [3, side, side], "mask": uint8 [1, side, side], "warp": float32 [2, 3] (affine_grid theta),
    "jitter": float32 [3] (brightness, contrast, saturation factors), "out_size": int64 [],
    "name", "size", "mask_path", "image_path"}``. Pairs that fail to decode at start-up are left out with a warning.
    """

    def __init__(
        self, samples: list[Sample], transform: TrainTransform, side: int, default_size: int, seed: int = 0
    ) -> None:
        self.transform, self.side, self.default_size, self.seed = transform, side, default_size, seed
        t0 = time.perf_counter()

        def work(s: Sample):
            try:
                return _decode_square(s, side)
            except (BadFile, OSError, cv2.error) as err:
                return Problem(s.image_path, f"{err} (skipped)")

        # one image per thread (OpenCV drops the GIL), never OpenCV's own pool: see opencv_pool_stopped
        with opencv_pool_stopped(), ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            results = list(pool.map(work, samples))
        failed = [r for r in results if isinstance(r, Problem)]
        if failed:
            log.warning(
                "data.augment_on=device: %d pair(s) failed to decode:\n%s", len(failed), format_problems(failed)
            )
        kept = [(s, r) for s, r in zip(samples, results) if not isinstance(r, Problem)]
        self.samples = [s for s, _ in kept]
        n = len(kept)
        self.images = torch.empty(n, 3, side, side, dtype=torch.uint8)
        self.masks = torch.empty(n, 1, side, side, dtype=torch.uint8)
        self.shapes = []
        for i, (_, (image, mask, hw)) in enumerate(kept):
            self.images[i] = torch.from_numpy(image)
            self.masks[i] = torch.from_numpy(mask)
            self.shapes.append(hw)
        log.info(
            "data.augment_on=device: %d training pairs decoded to %dx%d uint8 in memory (%.2f GB, %.1f s)",
            n,
            side,
            side,
            n * 4 * side * side / 1e9,
            time.perf_counter() - t0,
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> dict:
        index, size, epoch = (key, self.default_size, 0) if isinstance(key, (int, np.integer)) else key
        i = int(index) % len(self.samples)
        s, (h, w) = self.samples[i], self.shapes[i]
        rng = np.random.default_rng((self.seed % 2**64, epoch, i))  # as CODDataset: the same draws
        matrix, factors = self.transform.draw(h, w, size, rng)
        return {
            "image": self.images[i],
            "mask": self.masks[i],
            "warp": torch.from_numpy(warp_theta(matrix, h, w, self.side, size)),
            "jitter": torch.ones(3) if factors is None else torch.from_numpy(factors.astype(np.float32)),
            "out_size": torch.tensor(size),
            **s.about(),
        }


def color_jitter(image: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """The worker path's colour jitter on a float batch [B, 3, H, W] in [0, 255]; ``factors`` [B, 3]."""
    luma = image.new_tensor(_LUMA).view(1, 3, 1, 1)
    b, c, s = (factors[:, k].view(-1, 1, 1, 1).to(image) for k in range(3))
    mean = (image.mean((2, 3), keepdim=True) * luma).sum(1, keepdim=True) * b  # grey level after brightness
    out = (image * (b * c) + (1 - c) * mean).clamp_(0, 255)  # brightness, then contrast about that mean
    grey = (out * luma).sum(1, keepdim=True)
    return (out * s + grey * (1 - s)).clamp_(0, 255)


def augment(
    image: torch.Tensor, mask: torch.Tensor, warp: torch.Tensor, jitter: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [B, 3, S, S], [B, 1, S, S], theta [B, 2, 3], factors [B, 3] (all on one device) ->
    float32 image [B, 3, size, size] in [0, 1] and mask [B, 1, size, size] in {0, 1}."""
    both = torch.cat([image, mask], 1).float()  # one warp for image and mask: they cannot drift apart
    grid = F.affine_grid(warp.float(), [both.shape[0], 4, size, size], align_corners=False)
    both = F.grid_sample(both, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # the worker path rounds the warped mask to uint8 and keeps > 127, i.e. >= 127.5 before rounding
    return color_jitter(both[:, :3], jitter) / 255, (both[:, 3:] >= 127.5).float()


def training_inputs(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image [B, 3, S, S], mask [B, 1, S, S]) on ``device`` for a training batch of either path:
    the worker path's float tensors are moved, the device path's uint8 batch is moved and augmented."""
    if "warp" not in batch:
        return batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
    move = {k: batch[k].to(device, non_blocking=True) for k in ("image", "mask", "warp", "jitter")}
    return augment(move["image"], move["mask"], move["warp"], move["jitter"], int(batch["out_size"][0]))
