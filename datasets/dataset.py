"""One map-style dataset class for training, validation and test benchmarks.

A sample is ``{"image": float32 [3, S, S] RGB in [0, 1], "mask": float32 [1, S, S] in {0, 1},
"name": str (image file stem), "size": (mask_h, mask_w) original size, "mask_path": str, "image_path": str}``.
The key may be an int (size ``default_size``, epoch 0) or ``(index, size, epoch)`` from
:class:`datasets.loader.SeededBatchSampler`: augmentations are drawn from a generator seeded by
``(seed, epoch, index)``, so they do not depend on which worker loads a sample (no two workers
repeat each other, and a resumed run sees the same augmentations as an uninterrupted one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from config import DataConfig

from .problems import BadFile
from .reading import read_image, read_mask
from .transforms import TestTransform

log = logging.getLogger(__name__)

Key = int | tuple[int, int, int]


@dataclass(frozen=True)
class Sample:
    """One image/mask pair as found at build time (sizes from the file headers)."""

    image_path: str
    mask_path: str
    name: str
    height: int  # image
    width: int
    mask_height: int
    mask_width: int

    def about(self) -> dict:
        """What a loaded sample says of its files, beside its tensors: name, original mask size, paths."""
        return {
            "name": self.name,
            "size": (self.mask_height, self.mask_width),
            "mask_path": self.mask_path,
            "image_path": self.image_path,
        }


def eval_input(path: str, size: int, max_pixels: int, reduced_decode: bool = True) -> torch.Tensor:
    """How the model sees an image file outside training: float32 [3, size, size] RGB in [0, 1].

    The same steps as :meth:`CODDataset.load` with :class:`TestTransform` (validation and
    ``test.py --ckpt``; ``reduced_decode`` as ``data.reduced_decode``), so ``test.py --images``
    gives the same map for the same file.
    """
    transform = TestTransform(reduced_decode=reduced_decode)
    return transform.image(read_image(path, max_pixels, transform.needed_side(size)), size)


class CODDataset(Dataset):
    """Image/mask pairs with a paired transform.

    ``on_error``: what a file that fails to decode at load time (missed by the build-time check,
    or changed since) turns into: ``"next"`` loads the next sample instead (training), ``"blank"``
    returns a black image with this sample's name, size and mask path, so predictions and
    ground truth stay aligned (evaluation). Both log a warning naming the file. ``max_pixels``
    (``data.max_pixels``) is checked again at every load, before a file is decoded.
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: Callable,
        default_size: int,
        seed: int = 0,
        on_error: str = "next",
        name: str = "",
        max_pixels: int = DataConfig.max_pixels,
    ) -> None:
        if on_error not in ("next", "blank"):
            raise ValueError(f"on_error must be 'next' or 'blank', got {on_error!r}")
        self.samples, self.transform, self.default_size = list(samples), transform, default_size
        self.max_pixels, self.seed, self.on_error, self.name = max_pixels, seed, on_error, name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Key) -> dict:
        index, size, epoch = (key, self.default_size, 0) if isinstance(key, (int, np.integer)) else key
        index = int(index)
        if not -len(self.samples) <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        index %= len(self.samples)
        for attempt in range(min(len(self.samples), 10)):
            i = (index + attempt) % len(self.samples)
            try:
                return self.load(i, size, np.random.default_rng((self.seed % 2**64, epoch, i)))
            except (BadFile, OSError, cv2.error) as err:
                s = self.samples[i]
                log.warning("%s: skipping %s at load time (%s)", self.name or "dataset", s.image_path, err)
                if self.on_error == "blank":
                    return self._blank(s, size)
        raise BadFile(
            f"{self.name or 'dataset'}: 10 consecutive samples from index {index} failed to load; "
            "run python scripts/check_dataset.py on data.root"
        )

    def load(self, i: int, size: int, rng: np.random.Generator) -> dict:
        s = self.samples[i]
        needed = self.transform.needed_side(size)
        image = read_image(s.image_path, self.max_pixels, needed)
        # a transform that keeps soft masks reads their grey levels (see datasets.transforms)
        mask = read_mask(s.mask_path, self.max_pixels, needed, binarize=not self.transform.soft_masks)
        if mask.shape != image.shape[:2]:  # reported at build time; nearest keeps the mask binary
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        img, msk = self.transform(image, mask, size, rng)
        return {
            "image": img,
            "mask": msk,
            **s.about(),
        }

    def _blank(self, s: Sample, size: int) -> dict:
        return {
            "image": torch.zeros(3, size, size),
            "mask": torch.zeros(1, size, size),
            **s.about(),
        }
