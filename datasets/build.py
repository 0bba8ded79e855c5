"""Config -> datasets: scan the folders, check every file, report problems once, split, wrap."""

from __future__ import annotations

import hashlib
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cod_benchmarks import CAMOUFLAGED_MARK, is_camouflaged, is_cod10k, select_benchmark_images
from config import AugmentOn

from .dataset import CODDataset, Sample
from .layout import find_benchmark_dirs, pair_files, resolve_train_dirs
from .problems import BadFile, DatasetError, Problem, report
from .reading import probe, verify_decode
from .transforms import TestTransform, TrainTransform
from .video import ClipDataset, Sequence, find_sequences, is_video_folder, video_benchmarks

log = logging.getLogger(__name__)


def _check_pair(img: Path, gt: Path, max_pixels: int, verify: bool) -> Sample | list[Problem]:
    bad, info = [], {}
    for role, path in (("image", img), ("mask", gt)):
        try:
            info[role] = probe(path, max_pixels)
            if verify:
                verify_decode(path)
        except BadFile as err:
            bad.append(Problem(str(path), f"{err} (pair skipped)"))
    if bad:
        return bad
    i, m = info["image"], info["mask"]
    return Sample(str(img), str(gt), img.stem, i.height, i.width, m.height, m.width)


def scan(
    dirs: list[tuple[Path, Path]], max_pixels: int, verify: bool = False
) -> tuple[list[Sample], list[Problem], list[Problem]]:
    """Pair and check the files of each (image dir, mask dir): (samples, problems, notes).

    Each file's header and end marker are checked (~0.1 ms per file; 4,040 pairs take about a
    second), every pixel too when ``verify``.
    """
    pairs, problems = [], []
    for img_dir, gt_dir in dirs:
        found, bad = pair_files(img_dir, gt_dir)
        pairs += found
        problems += bad
    with ThreadPoolExecutor(max_workers=8) as pool:  # file-system latency, and decoders drop the GIL
        results = list(pool.map(lambda p: _check_pair(p[0], p[1], max_pixels, verify), pairs))
    samples, notes = [], []
    for r in results:
        if isinstance(r, Sample):
            samples.append(r)
            if (r.mask_height, r.mask_width) != (r.height, r.width):
                notes.append(
                    Problem(
                        r.mask_path,
                        f"mask is {r.mask_height}x{r.mask_width} but its image is "
                        f"{r.height}x{r.width}: resized (nearest) when loaded",
                    )
                )
        else:
            problems += r
    return samples, problems, notes


def cod10k_camouflaged(name: str, samples: list[Sample]) -> tuple[list[Sample], list[Problem]]:
    """COD10K's test benchmark is its camouflaged images (:mod:`cod_benchmarks`); drop the rest."""
    cam, rest = select_benchmark_images(name, samples, key=lambda s: s.name)
    if not is_cod10k(name):
        return samples, []
    if samples and not any(is_camouflaged(s.name) for s in samples):
        return samples, [
            Problem(
                name,
                f"no file name contains '{CAMOUFLAGED_MARK}', so camouflaged and non-camouflaged "
                "images cannot be told apart; all are used",
            )
        ]
    if not rest:
        return cam, []
    examples = ", ".join(s.name for s in rest[:3])
    return cam, [
        Problem(
            name,
            f"{len(rest)} non-camouflaged image(s) without '{CAMOUFLAGED_MARK}' in the name excluded "
            f"(e.g. {examples}); the benchmark is the camouflaged images only",
        )
    ]


def split_train_val(samples: list[Sample], fraction: float, seed: int, root: Path) -> tuple[list[Sample], list[Sample]]:
    """Seeded hold-out: the ``fraction`` of samples with the smallest hash of (seed, path).

    Hashing each file's path (relative to ``root``) rather than shuffling the list keeps a file on
    the same side when other files are added or removed, and the split is disjoint by construction.
    """
    if fraction <= 0 or len(samples) < 2:
        return list(samples), []
    n_val = min(len(samples) - 1, max(1, round(fraction * len(samples))))

    def key(s: Sample) -> str:
        try:
            rel = Path(s.image_path).relative_to(root).as_posix()
        except ValueError:
            rel = Path(s.image_path).as_posix()
        return hashlib.sha1(f"{seed}:{rel}".encode()).hexdigest()

    ranked = sorted(range(len(samples)), key=lambda i: key(samples[i]))
    val_ids = set(ranked[:n_val])
    return ([s for i, s in enumerate(samples) if i not in val_ids], [s for i, s in enumerate(samples) if i in val_ids])


def train_transform(d) -> TrainTransform:
    """The training augmentation of the ``data`` section ``d``."""
    return TrainTransform(
        hflip=float(d.hflip),
        rotate=float(d.rotate),
        scale=tuple(d.scale),
        color_jitter=float(d.color_jitter),
        side_crop=float(d.side_crop),
        soft_masks=bool(d.soft_masks),
        reduced_decode=bool(d.reduced_decode),
        vflip=float(d.vflip),
        mask_interpolation=str(d.mask_interpolation),
    )


def _test_dataset(samples: list[Sample], cfg, name: str, transform=None) -> CODDataset:
    """Evaluation samples, resized (or through ``transform``, e.g. the training augmentation)."""
    d = cfg.data
    if transform is None:
        transform = TestTransform(
            soft_masks=bool(d.soft_masks),
            reduced_decode=bool(d.reduced_decode),
            mask_interpolation=str(d.mask_interpolation),
        )
    return CODDataset(samples, transform, int(d.image_size), max_pixels=int(d.max_pixels), on_error="blank", name=name)


def build_train_val(cfg) -> tuple[CODDataset, CODDataset | None]:
    """Training set and validation set (None when ``data.val_fraction`` is 0 and no ``data.val_set``).

    Validation is a seeded hold-out of the training images unless ``data.val_set`` names a test
    benchmark. Raises :class:`DatasetError` when folders are missing, nothing usable is left, or
    ``data.strict`` is set and any file is bad.
    """
    d = cfg.data
    root = Path(d.root)
    if any(is_video_folder(root / entry) for entry in d.train):
        return build_clip_train_val(cfg)
    dirs = resolve_train_dirs(root, list(d.train))
    samples, problems, notes = scan(dirs, int(d.max_pixels), bool(d.verify))
    val_samples: list[Sample] = []
    if d.val_set:
        bench = find_benchmark_dirs(root, [d.val_set])
        ((name, bdirs),) = bench.items()
        val_samples, vp, vn = scan([bdirs], int(d.max_pixels), bool(d.verify))
        val_samples, cam_notes = cod10k_camouflaged(name, val_samples)
        problems, notes = problems + vp, notes + vn + cam_notes
    report(problems, notes, bool(d.strict), "training data")
    if not samples:
        raise DatasetError(
            f"no usable training images in {', '.join(str(i) for i, _ in dirs)} "
            "(see the problems above; python scripts/check_dataset.py ROOT lists them)"
        )
    seed = int(cfg.train.seed)
    if d.val_set and not val_samples:
        raise DatasetError(f"data.val_set={d.val_set}: no usable images in that benchmark (see the problems above)")
    if d.val_set:
        train = samples
        log.warning(
            "validating on test benchmark '%s' (data.val_set): choosing checkpoints on a test set "
            "is not a clean protocol; leave data.val_set empty to hold out data.val_fraction "
            "of the training images instead",
            d.val_set,
        )
    else:
        train, val_samples = split_train_val(samples, float(d.val_fraction), seed, root)
    log.info(
        "training data: %d pairs -> %d train, %d validation (%s)",
        len(samples),
        len(train),
        len(val_samples),
        f"benchmark {d.val_set}" if d.val_set else f"seeded {d.val_fraction:g} hold-out",
    )
    if d.cache:
        from .cache import cache_samples  # only needed when asked for

        train = cache_samples(train, d)
    transform = train_transform(d)
    if d.augment_on == AugmentOn.device:
        from .device_augment import DecodedTrainSet

        side = math.ceil(transform.needed_side(max([int(d.image_size), *d.multi_scale])))
        train_ds = DecodedTrainSet(train, transform, side, int(d.image_size), seed=seed)
    else:
        train_ds = CODDataset(
            train, transform, int(d.image_size), max_pixels=int(d.max_pixels), seed=seed, on_error="next", name="train"
        )
    val_transform = transform if d.val_augment else None  # the published E2Net validated on augmented images
    val_ds = _test_dataset(val_samples, cfg, "val", val_transform) if val_samples else None
    return train_ds, val_ds


def build_test_sets(cfg, names: list[str] | None = None) -> dict[str, CODDataset]:
    """``{benchmark name: dataset}`` for ``names`` (default ``data.test_sets``; empty: every folder under
    TestDataset/)."""
    d = cfg.data
    benches = find_benchmark_dirs(Path(d.root), list(d.test_sets if names is None else names) or None)
    found, problems, notes = {}, [], []
    for name, dirs in benches.items():
        samples, bad, odd = scan([dirs], int(d.max_pixels), bool(d.verify))
        samples, cam_notes = cod10k_camouflaged(name, samples)
        problems, notes = problems + bad, notes + odd + cam_notes
        if samples:
            found[name] = _test_dataset(samples, cfg, name)
    report(problems, notes, bool(d.strict), "test data")
    if not found:
        raise DatasetError(f"no usable test images in {', '.join(benches)} (see the problems above)")
    log.info("test data: %s", ", ".join(f"{k} {len(v)}" for k, v in found.items()))
    return found


def build_clip_train_val(cfg) -> tuple[ClipDataset, ClipDataset | None]:
    """Training and validation clips from the ``data.train`` folders of sequences: a seeded hold-out of
    ``data.val_fraction`` of the sequences (whole sequences, so no validation frame has a training
    neighbour), or the sequences of the video benchmark ``data.val_set``."""
    d, root, seed = cfg.data, Path(cfg.data.root), int(cfg.train.seed)
    if d.augment_on != AugmentOn.workers or d.cache:
        raise DatasetError("config key 'data.augment_on': clips are augmented by the workers: set "
                           "data.augment_on=workers and data.cache=false for video training")  # fmt: skip
    sequences, problems = [], []
    for entry in d.train:
        folder = root / entry
        if not is_video_folder(folder):
            raise DatasetError(
                f"training folder {folder}: holds no sequences (<sequence>/Imgs+GT or frames+groundtruth); "
                "data.train lists either image folders or video folders, not both"
            )
        found, bad = find_sequences(folder)
        sequences, problems = sequences + found, problems + bad
    val: list[Sequence] = []
    if d.val_set:
        for folder in video_benchmarks(root, [d.val_set]).values():
            found, bad = find_sequences(folder)
            val, problems = val + found, problems + bad
    report(problems, [], bool(d.strict), "training data")
    if not sequences:
        raise DatasetError(f"no usable training sequences in {', '.join(str(root / e) for e in d.train)}")
    train = sequences
    if not d.val_set:
        train, val = split_train_val(sequences, float(d.val_fraction), seed, root)
    log.info(
        "training data: %d sequences -> %d train (%d annotated frames), %d validation; clips of %d frame(s), "
        "stride %d", len(sequences), len(train), sum(len(s.masks) for s in train), len(val), d.clip, d.clip_stride,
    )  # fmt: skip
    common = {"clip": int(d.clip), "stride": int(d.clip_stride), "max_pixels": int(d.max_pixels)}
    transform = train_transform(d)
    train_ds = ClipDataset(train, transform, int(d.image_size), seed=seed, on_error="next", name="train", **common)
    if not val:
        return train_ds, None
    test = TestTransform(soft_masks=bool(d.soft_masks), reduced_decode=bool(d.reduced_decode))
    val_transform = transform if d.val_augment else test
    return train_ds, ClipDataset(val, val_transform, int(d.image_size), on_error="blank", name="val", **common)
