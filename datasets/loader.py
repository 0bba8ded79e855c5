"""DataLoaders: seeded epoch-wise shuffling (DDP-safe), one image size per batch, worker setup.

Training batches come from :class:`SeededBatchSampler`, whose items are ``(index, size, epoch)``
keys: the order of an epoch depends only on ``(seed, epoch)`` (via ``DistributedSampler``, also
with a single process), the size of a batch only on ``(seed, epoch, batch index)`` (the same on
every rank), and a sample's augmentation only on ``(seed, epoch, index)`` (see dataset.py). A
resumed run therefore replays exactly what an uninterrupted one would have seen, also from the
middle of an epoch. Call :func:`set_epoch` before each epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class SeededBatchSampler(Sampler):
    """Batches of ``(index, size, epoch)`` keys; ``size`` is drawn per batch from ``sizes``.

    :meth:`set_epoch` must be called before every pass (iterating twice without it is an error, so
    a loop that forgets it cannot silently replay or invent an epoch); its ``start`` skips the
    batches a resumed run already trained on, leaving the rest of the epoch exactly as it was.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, sizes: Sequence[int], seed: int) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.sizes, self.seed, self.epoch, self.start = list(sizes), seed, 0, 0
        self._fresh = False  # set_epoch called since the last pass

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Next pass: epoch ``epoch`` from its batch ``start`` (0 = the whole epoch)."""
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"start batch {start} is outside an epoch of {self.num_batches} batches")
        self.epoch, self.start, self._fresh = epoch, start, True
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def size_at(self, b: int) -> int:
        if len(self.sizes) == 1:
            return self.sizes[0]
        rng = np.random.default_rng((self.seed % 2**64, self.epoch, b, 1))
        return int(self.sizes[rng.integers(len(self.sizes))])

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        if not self._fresh:
            raise RuntimeError("SeededBatchSampler: call set_epoch(epoch) before each pass (datasets.set_epoch)")
        self._fresh = False
        batch: list[int] = []
        b = 0
        for i in self.sampler:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                if b >= self.start:
                    yield [(j, self.size_at(b), self.epoch) for j in batch]
                batch, b = [], b + 1
        if batch and not self.drop_last and b >= self.start:
            yield [(j, self.size_at(b), self.epoch) for j in batch]

    @property
    def num_batches(self) -> int:
        """Batches in a whole epoch."""
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        """Batches the next pass yields (the whole epoch less the skipped ``start``)."""
        return self.num_batches - self.start


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` in order: evaluation shards without padded duplicates.

    After :meth:`set_epoch` it yields ``(index, size, epoch)`` keys, so that a validation set
    through the training augmentation (``data.val_augment``) draws each epoch's own crops and flips.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, size: int = 0) -> None:
        self.indices, self.size, self.epoch = list(range(rank, n, world_size)), size, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int | tuple[int, int, int]]:
        if self.epoch is None:
            return iter(self.indices)
        return iter([(i, self.size, self.epoch) for i in self.indices])

    def __len__(self) -> int:
        return len(self.indices)


def collate(samples: list[dict]) -> dict:
    """List of samples -> ``{"image": [B,3,S,S], "mask": [B,1,S,S], "name": list[str],
    "size": list[(h, w)], "mask_path": list[str], "image_path": list[str]}``; any other key (the device path's augmentation
    parameters) holds tensors and is stacked."""
    out = {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "name": [s["name"] for s in samples],
        "size": [tuple(s["size"]) for s in samples],
        "mask_path": [s["mask_path"] for s in samples],
        "image_path": [s["image_path"] for s in samples],
    }
    for k in samples[0].keys() - out.keys():
        out[k] = torch.stack([s[k] for s in samples])
    return out


def seed_worker(worker_id: int) -> None:
    """Distinct global seeds per worker (for any library that draws from them) and one thread each."""
    seed = torch.initial_seed() % 2**32  # torch gives each worker base_seed + worker_id
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(1)  # workers are the parallelism; OpenCV's own pool would oversubscribe


def _rank_world(distributed: bool) -> tuple[int, int]:
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_loader(ds: Dataset, cfg, train: bool, distributed: bool = False) -> DataLoader:
    """DataLoader for ``ds``: shuffled, seeded, multi-scale batches when ``train``, else in order.

    Training: ``train.batch_size`` per process, batches of one size from ``data.multi_scale`` (or
    ``data.image_size``), the last incomplete batch dropped when there is at least one full one.
    Evaluation: ``eval.batch_size``, at ``data.image_size``, each rank a disjoint shard when
    ``distributed``. Workers: ``train.num_workers``, persistent; memory pinned on CUDA.
    """
    rank, world = _rank_world(distributed)
    workers = int(cfg.train.num_workers)
    seed = int(cfg.train.seed)
    common = {
        "num_workers": workers,
        "collate_fn": collate,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": workers > 0,
        "worker_init_fn": seed_worker if workers > 0 else None,
        "generator": torch.Generator().manual_seed(seed),
    }
    if train:
        # DistributedSampler with one replica is a plain seeded per-epoch shuffle
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        batch = int(cfg.train.batch_size)
        sizes = list(cfg.data.multi_scale) or [int(cfg.data.image_size)]
        batches = SeededBatchSampler(sampler, batch, drop_last=len(sampler) >= batch, sizes=sizes, seed=seed)
        return DataLoader(ds, batch_sampler=batches, **common)
    sampler = ShardSampler(len(ds), rank, world, size=int(cfg.data.image_size))
    return DataLoader(ds, batch_size=int(cfg.eval.batch_size), sampler=sampler, **common)


def set_epoch(loader: DataLoader, epoch: int, start: int = 0) -> None:
    """Make ``loader`` yield epoch ``epoch``'s order, sizes and augmentations from its batch ``start``
    (call every epoch; ``start`` > 0 continues a run stopped mid-epoch)."""
    if isinstance(loader.batch_sampler, SeededBatchSampler):
        loader.batch_sampler.set_epoch(epoch, start)
    elif start:
        raise ValueError("only a training loader (SeededBatchSampler) can start mid-epoch")
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
