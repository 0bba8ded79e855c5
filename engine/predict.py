"""Inference for test.py: batched, under autocast, each map restored to its original size.

Probability maps are resized bilinearly to the mask's (or image's) original size and
stored as 8-bit PNGs (``round(255 * p)``), the form PySODMetrics and every published COD
evaluation reads; a :class:`MapRule` can ask for the published E2Net's path instead (the final
logits resized from the decoder's own output straight to that size, then ``floor(255 * p)``). One's own images go through the data package's
:func:`datasets.dataset.eval_input`, the very steps of validation and ``--ckpt`` (square
resize to ``data.image_size``), so a photo gives exactly the map it would as a benchmark image.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from cod_benchmarks import list_images
from datasets import BadFile, decode_image, eval_input, probe
from engine.amp import Precision
from engine.distributed import all_gather_objects, gather_to_main, interleave
from evaluation.discovery import EvaluationError

log = logging.getLogger(__name__)


def forward_probs(model: nn.Module, x: Tensor, precision: Precision) -> tuple[list[Tensor], Tensor]:
    """Every output's logits (under autocast) and the final map's probabilities [B, 1, H, W] in
    float32: the final prediction is the last output."""
    with precision.autocast():
        outputs = model(x)
    return outputs, torch.sigmoid(outputs[-1].float())


@dataclass(frozen=True)
class MapRule:
    """How the final output becomes an 8-bit map at an original size (``eval.resize_logits``,
    ``eval.floor_maps``, ``eval.binarize``): ``resize_logits`` runs the model once more per image with
    its output resized straight to that size, then the sigmoid; ``floor`` truncates ``255 p`` instead of
    rounding; ``binarize`` (a threshold t) writes 255 where p > t and 0 elsewhere instead."""

    resize_logits: bool = False
    floor: bool = False
    binarize: float | None = None

    @classmethod
    def of(cls, cfg) -> MapRule:
        return cls(
            resize_logits=bool(cfg.eval.resize_logits), floor=bool(cfg.eval.floor_maps), binarize=cfg.eval.binarize
        )


def quantise(prob: Tensor, floor: bool = False, binarize: float | None = None) -> np.ndarray:
    """[1, 1, H, W] probabilities -> uint8 [H, W]: ``round(255 p)``, or ``floor(255 p)``, or with a
    ``binarize`` threshold t ``255 [p > t]``."""
    p = prob[0, 0].float()
    if binarize is not None:
        return (p > binarize).to(torch.uint8).mul_(255).cpu().numpy()
    scaled = p * 255
    return (scaled.floor() if floor else scaled.round()).clamp_(0, 255).to(torch.uint8).cpu().numpy()


def to_uint8(prob: Tensor, size: tuple[int, int], floor: bool = False, binarize: float | None = None) -> np.ndarray:
    """``prob``: [1, 1, h, w] float probabilities -> uint8 [H, W] at ``size`` = (H, W) (bilinear)."""
    prob = F.interpolate(prob.float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return quantise(prob, floor, binarize)


def final_maps(
    model: nn.Module, x: Tensor, prob: Tensor, sizes: Sequence[tuple[int, int]], precision: Precision, rule: MapRule
) -> list[np.ndarray]:
    """uint8 maps [H_j, W_j] of the final prediction for the images ``x`` [B, 3, S, S] at ``sizes``:
    ``prob`` (their final probabilities from :func:`forward_probs`) resized, or under
    ``rule.resize_logits`` the model's final logits at each size (one more forward per image)."""
    if not rule.resize_logits:
        return [to_uint8(prob[j : j + 1], size, rule.floor, rule.binarize) for j, size in enumerate(sizes)]
    maps = []
    for j, size in enumerate(sizes):
        with precision.autocast():
            logits = model(x[j : j + 1], size=tuple(int(s) for s in size))[-1]
        maps.append(quantise(torch.sigmoid(logits.float()), rule.floor, rule.binarize))
    return maps


def write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"cannot write '{path}' (check free disk space and write permission)")


def encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode a {image.dtype} {image.shape} map as PNG")
    return buf.tobytes()


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: Sequence[dict],
    precision: Precision,
    device: torch.device,
    out_dir: Path,
    desc: str = "predict",
    rule: MapRule = MapRule(),
) -> list[tuple[str, str, str]]:
    """Write ``out_dir/<name>.png`` for every sample of ``loader`` (batches as built by
    ``datasets.build_loader``: ``image`` [B, 3, S, S], ``size`` [(H, W)], ``name``, ``mask_path``),
    made by ``rule``.

    Under torch.distributed (a loader built with ``distributed=True``) each rank predicts its shard
    and sends the encoded maps to rank 0, which writes them all: one writer, and no file system
    shared between machines needed. Returns ``[(name, map path, mask path)]`` in dataset order,
    ready for scoring, on rank 0; ``[]`` on the other ranks.
    """
    model.eval()
    main = not dist.is_initialized() or dist.get_rank() == 0
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[list[tuple[str, str, str]]] = []
    steps = max(all_gather_objects(len(loader)))  # a rank may hold one batch fewer than another
    batches = iter(loader)
    for _ in tqdm(range(steps), desc=desc, unit="batch", leave=False, disable=None if main else True):
        batch = next(batches, None)
        maps = []
        if batch is not None:
            x = batch["image"].to(device, non_blocking=True)
            _, prob = forward_probs(model, x, precision)
            images = final_maps(model, x, prob, batch["size"], precision, rule)
            for name, image, mask_path in zip(batch["name"], images, batch["mask_path"]):
                maps.append((name, encode_png(image), mask_path))
        gathered = gather_to_main(maps)
        for r, rank_maps in enumerate(gathered or []):
            if r == len(shards):
                shards.append([])
            for name, png, mask_path in rank_maps:
                path = out_dir / f"{name}.png"
                path.write_bytes(png)
                shards[r].append((name, str(path), mask_path))
    return interleave(shards)


def list_own_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (``cod_benchmarks.IMAGE_EXTS``; hidden files skipped), sorted by name."""
    return sorted(p for files in list_images(folder).values() for p in files)


def _inputs(
    paths: list[Path], size: int, max_pixels: int, reduced_decode: bool = True
) -> Iterator[tuple[Path, torch.Tensor]]:
    """Each file as the model sees it (:func:`datasets.dataset.eval_input`, as in validation and
    ``--ckpt``); unreadable files, non-images and decompression bombs are skipped with a warning."""
    for path in paths:
        try:
            probe(path, max_pixels)
            yield path, eval_input(str(path), size, max_pixels, reduced_decode)
        except BadFile as err:
            log.warning("skipping %s: %s", path, err)


def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """Side by side: the image | the image tinted by the mask with its outline.

    ``image``: RGB uint8 [H, W, 3]; ``mask``: uint8 [H, W]. Returns RGB uint8 [H, 2W, 3].
    """
    alpha = (mask.astype(np.float32) / 255.0)[..., None] * 0.55
    tinted = (image * (1 - alpha) + np.array(colour, np.float32) * alpha).astype(np.uint8)
    contours, _ = cv2.findContours((mask >= 128).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(tinted, contours, -1, colour, max(1, min(mask.shape) // 250), lineType=cv2.LINE_AA)
    return np.concatenate([image, tinted], axis=1)


@torch.no_grad()
def predict_images(
    model: nn.Module,
    paths: list[Path],
    out_dir: Path,
    *,
    precision: Precision,
    device: torch.device,
    size: int,
    batch_size: int,
    max_pixels: int,
    rule: MapRule = MapRule(),
    reduced_decode: bool = True,
) -> int:
    """Masks (``out_dir/masks/<stem>.png``, made by ``rule``) and overlays
    (``out_dir/overlays/<stem>.jpg``) for images of any size (``reduced_decode``: see
    :func:`datasets.dataset.eval_input`). Returns the number of images written."""
    model.eval()
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    stems, count = set(), 0
    batch: list[tuple[Path, torch.Tensor]] = []

    def flush() -> None:
        nonlocal count
        x = torch.stack([x for _, x in batch]).to(device)
        _, prob = forward_probs(model, x, precision)
        for j, (path, _) in enumerate(batch):
            try:
                img = decode_image(path)  # full size, for the overlay
            except BadFile as err:  # changed since it was read a moment ago
                log.warning("skipping %s: %s", path, err)
                continue
            stem = path.stem if path.stem not in stems else f"{path.stem}_{path.suffix.lstrip('.')}"
            stems.add(stem)
            mask = final_maps(model, x[j : j + 1], prob[j : j + 1], [img.shape[:2]], precision, rule)[0]
            write_png(out_dir / "masks" / f"{stem}.png", mask)
            side = cv2.cvtColor(overlay(img, mask), cv2.COLOR_RGB2BGR)
            if not cv2.imwrite(str(out_dir / "overlays" / f"{stem}.jpg"), side, [cv2.IMWRITE_JPEG_QUALITY, 90]):
                raise OSError(f"cannot write '{out_dir / 'overlays' / stem}.jpg'")
            count += 1
        batch.clear()

    inputs = _inputs(paths, size, max_pixels, reduced_decode)
    for item in tqdm(inputs, total=len(paths), desc="predict", unit="image", disable=None):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return count


def predict_folder(trained, model: nn.Module, folder: Path, out: Path) -> None:
    """``test.py --images``: ``model`` (``trained.model``, perhaps wrapped in test-time augmentation)
    on every image in ``folder`` at the trained config's size and map rule, see :func:`predict_images`.
    ``trained``: an ``engine.trained.Trained``."""
    cfg, paths = trained.cfg, list_own_images(folder)
    n = predict_images(
        model,
        paths,
        out,
        precision=trained.precision,
        device=trained.device,
        size=int(cfg.data.image_size),
        batch_size=int(cfg.eval.batch_size),
        max_pixels=int(cfg.data.max_pixels),
        rule=MapRule.of(cfg),
        reduced_decode=bool(cfg.data.reduced_decode),
    )
    if n == 0:
        raise EvaluationError(f"none of the {len(paths)} files in '{folder}' could be read as an image")
    log.info("%d of %d images: masks in %s, overlays in %s", n, len(paths), out / "masks", out / "overlays")
