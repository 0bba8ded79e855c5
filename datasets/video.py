"""Video COD data: sequences of frames with masks on some of them, and clips of frames around them.

Layouts as downloaded, under ``data.root``:
- MoCA-Mask: ``MoCA-Mask/{TrainDataset_per_sq,TestDataset_per_sq}/<sequence>/{Imgs/*.jpg, GT/*.png}``,
  a mask on every fifth frame;
- CAD: ``CamouflagedAnimalDataset/<sequence>/{frames/<sequence>_NNN.png, groundtruth/NNN_gt.png}``.
A frame and its mask pair by the number at the end of their names (``00005`` = ``00005``; CAD's
``frog_011`` = ``011_gt``). A prediction map is named after its frame (``00005.png``,
``frog_011.png``), as SLT-Net's evaluation scripts read them. A ``data.train`` folder holding
sequences trains on clips (:class:`ClipDataset`).

A clip of ``T`` frames around frame ``i`` is ``clip_indices(i, n, T, stride)``: ``i`` is its anchor,
frame ``(T - 1) // 2`` of the clip (``cod_benchmarks.clip_anchor``), the others ``stride`` frames
apart, repeated at the sequence's ends. Training, validation, ``test.py`` and ``--video`` all use it.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from cod_benchmarks import NO_MASK, VIDEO_COD, benchmark_info, clip_anchor, list_images, list_masks

from .dataset import CODDataset
from .layout import _subdir
from .problems import BadFile, DatasetError, Problem, report
from .reading import header_size, read_image, read_mask
from .transforms import TestTransform

log = logging.getLogger(__name__)

MOCA_DIR, MOCA_TRAIN, MOCA_TEST = "MoCA-Mask", "TrainDataset_per_sq", "TestDataset_per_sq"
CAD_DIR = "CamouflagedAnimalDataset"
# (frame folder, mask folder) of a sequence: MoCA-Mask's, CAD's (matched case-insensitively).
SEQUENCE_DIRS = (("imgs", "gt"), ("frames", "groundtruth"))
MASK_SUFFIX = "_gt"  # CAD's masks: NNN_gt.png
# Where each video test benchmark's sequences are, relative to data.root.
VIDEO_TEST_DIRS = {"MoCA-Mask": Path(MOCA_DIR) / MOCA_TEST, "CAD": Path(CAD_DIR)}


def frame_number(stem: str) -> int | None:
    """The number ending a frame's or mask's name (``frog_011`` -> 11, ``011_gt`` -> 11), or None."""
    found = re.search(r"(\d+)$", stem.removesuffix(MASK_SUFFIX))
    return int(found.group(1)) if found else None


@dataclass
class Sequence:
    """One video: every frame in order, and the masks of the annotated ones (by frame index)."""

    name: str
    folder: Path
    frames: list[Path]
    masks: dict[int, Path] = field(default_factory=dict)

    @property
    def image_path(self) -> str:  # what split_train_val hashes: the sequence goes to one side whole
        return str(self.folder)

    @property
    def annotated(self) -> list[int]:
        return sorted(self.masks)


def read_sequence(folder: Path) -> tuple[Sequence | None, list[Problem]]:
    """The sequence in ``folder`` (frame and mask folders of :data:`SEQUENCE_DIRS`), or None."""
    for frames_name, masks_name in SEQUENCE_DIRS:
        frame_dir, mask_dir = _subdir(folder, (frames_name,)), _subdir(folder, (masks_name,))
        if frame_dir and mask_dir:
            break
    else:
        return None, []
    problems = []
    frames = sorted(
        (files[0] for files in list_images(frame_dir).values()), key=lambda p: (frame_number(p.stem) or 0, p.name)
    )
    index = {frame_number(p.stem): i for i, p in enumerate(frames)}
    masks = {}
    for stem, files in list_masks(mask_dir).items():
        i = index.get(frame_number(stem))
        if i is None:
            problems.append(Problem(str(files[0]), f"mask without a frame (no frame numbered like it in {frame_dir})"))
        else:
            masks[i] = files[0]
    if not masks:
        problems.append(Problem(str(folder), "sequence without any mask: not used"))
        return None, problems
    return Sequence(folder.name, folder, frames, masks), problems


def find_sequences(folder: str | Path) -> tuple[list[Sequence], list[Problem]]:
    """The sequences in the sub-folders of ``folder``, by name."""
    folder, found, problems = Path(folder), [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
        seq, bad = read_sequence(sub)
        problems += bad
        if seq is not None:
            found.append(seq)
    return found, problems


def is_video_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds sequences (a sub-folder with frame and mask folders)."""
    folder = Path(folder)
    return folder.is_dir() and any(
        _subdir(sub, (f,)) and _subdir(sub, (m,)) for sub in folder.iterdir() if sub.is_dir() for f, m in SEQUENCE_DIRS
    )


def is_video_benchmark(name: str) -> bool:
    """Whether ``name`` is a registered video test set (MoCA-Mask, CAD; any spelling the registry knows)."""
    info = benchmark_info(name)
    return info is not None and info.field == VIDEO_COD and info.name in VIDEO_TEST_DIRS


def video_benchmarks(root: str | Path, names: list[str] | None = None) -> dict[str, Path]:
    """``{benchmark: folder of its sequences}`` of the video test sets under ``root``: those ``names``
    picks (any spelling the registry knows; a named one that is missing raises ``DatasetError``), or
    every one found."""
    root = Path(root)
    wanted = [benchmark_info(n).name for n in names if is_video_benchmark(n)] if names else list(VIDEO_TEST_DIRS)
    found = {}
    for name in wanted:
        folder = root / VIDEO_TEST_DIRS[name]
        if is_video_folder(folder):
            found[name] = folder
        elif names:
            raise DatasetError(
                f"video benchmark '{name}' not found: expected its sequences in {folder} "
                f"(<sequence>/{'{Imgs,GT}' if name == 'MoCA-Mask' else '{frames,groundtruth}'}); set data.root"
            )
    return found


def clip_indices(anchor: int, n: int, clip: int, stride: int) -> list[int]:
    """Frame indices of the clip of ``clip`` frames around frame ``anchor`` of ``n``, ``stride`` apart;
    the anchor is the clip's frame ``clip_anchor(clip)``; indices past either end repeat the end frame."""
    first = anchor - clip_anchor(clip) * stride
    return [min(max(first + k * stride, 0), n - 1) for k in range(clip)]


@dataclass(frozen=True)
class ClipSample:
    """One anchor: an annotated frame of a sequence, named ``<sequence>/<frame stem>``."""

    sequence: Sequence
    anchor: int

    @property
    def image_path(self) -> str:
        return str(self.sequence.frames[self.anchor])

    @property
    def mask_path(self) -> str:
        return str(self.sequence.masks[self.anchor])

    @property
    def name(self) -> str:
        return f"{self.sequence.name}/{self.sequence.frames[self.anchor].stem}"


class ClipDataset(CODDataset):
    """Clips around the annotated frames of ``sequences``, every frame through the same draw of
    ``transform`` (one crop, flip and jitter per clip).

    A sample is :class:`CODDataset`'s with ``"image"`` [T, 3, S, S] and ``"mask"`` [T, 1, S, S] (a frame
    without annotation filled with :data:`NO_MASK`) for ``clip`` > 1, and exactly an image sample for
    ``clip`` = 1 (the anchor alone); ``name``, ``size``, ``mask_path`` and ``image_path`` are the anchor's.
    """

    def __init__(
        self,
        sequences: list[Sequence],
        transform,
        default_size: int,
        clip: int = 1,
        stride: int = 1,
        **kwargs,
    ) -> None:
        samples = [ClipSample(s, i) for s in sequences for i in s.annotated]
        super().__init__(samples, transform, default_size, **kwargs)
        self.clip, self.stride = clip, stride

    def load(self, i: int, size: int, rng: np.random.Generator) -> dict:
        s: ClipSample = self.samples[i]
        seq, needed = s.sequence, self.transform.needed_side(size)
        images, masks = [], []
        for j in clip_indices(s.anchor, len(seq.frames), self.clip, self.stride):
            image = read_image(seq.frames[j], self.max_pixels, needed)
            if j in seq.masks:
                mask = read_mask(seq.masks[j], self.max_pixels, needed, binarize=not self.transform.soft_masks)
                if mask.shape != image.shape[:2]:
                    mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
            else:
                mask = np.zeros(image.shape[:2], np.uint8)
            img, msk = self.transform(image, mask, size, copy.deepcopy(rng))  # the same draws for every frame
            images.append(img)
            masks.append(msk if j in seq.masks else torch.full_like(msk, NO_MASK))
        h, w = header_size(s.mask_path, self.max_pixels)
        stack = self.clip > 1
        return {
            "image": torch.stack(images) if stack else images[0],
            "mask": torch.stack(masks) if stack else masks[0],
            "name": s.name,
            "size": (h, w),
            "mask_path": s.mask_path,
            "image_path": s.image_path,
        }

    def _blank(self, s: ClipSample, size: int) -> dict:
        try:
            h, w = header_size(s.mask_path, self.max_pixels)
        except (BadFile, OSError):  # the mask itself is what failed: its map will be reported unscorable
            h, w = size, size
        shape = (self.clip,) if self.clip > 1 else ()
        return {
            "image": torch.zeros(*shape, 3, size, size),
            "mask": torch.zeros(*shape, 1, size, size),
            "name": s.name,
            "size": (h, w),
            "mask_path": s.mask_path,
            "image_path": s.image_path,
        }


def split_test_sets(root: str | Path, names: list[str]) -> tuple[list[str] | None, dict[str, Path]]:
    """``data.test_sets`` -> (the image benchmarks' names for ``build_test_sets``, ``[]`` = every one under
    TestDataset/, None = none; ``{video benchmark: folder of its sequences}``). Empty ``names``: every
    video benchmark found, and the image benchmarks when there are any. A named benchmark that is not
    there raises ``DatasetError``."""
    from .layout import find_benchmark_dirs

    if names:
        image = [n for n in names if not is_video_benchmark(n)]
        video = [n for n in names if is_video_benchmark(n)]
        if image:
            find_benchmark_dirs(root, image)  # a named benchmark that is missing fails here, before any work
        return image or None, video_benchmarks(root, video) if video else {}
    found = video_benchmarks(root)
    if found:
        try:
            find_benchmark_dirs(root)
        except DatasetError:  # a video-only data.root
            return None, found
    return [], found


def video_test_set(folder: Path, cfg, name: str) -> ClipDataset:
    """Every annotated frame of the sequences in ``folder``, each in the clip the model was trained on
    (``data.clip``, ``data.clip_stride``), resized as the image benchmarks are."""
    d = cfg.data
    sequences, problems = find_sequences(folder)
    report(problems, [], bool(d.strict), f"test data {name}")
    if not sequences:
        raise DatasetError(f"{name}: no usable sequences in {folder}")
    transform = TestTransform(soft_masks=bool(d.soft_masks), reduced_decode=bool(d.reduced_decode))
    return ClipDataset(
        sequences, transform, int(d.image_size), clip=int(d.clip), stride=int(d.clip_stride),
        max_pixels=int(d.max_pixels), on_error="blank", name=name,
    )  # fmt: skip
