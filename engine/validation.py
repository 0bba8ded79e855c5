"""Validation during training and the end-of-run test scores: maps scored at each mask's
original size with the COD metrics, gathered from every rank, logged to TensorBoard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

import datasets
from engine.amp import Precision
from engine.checkpoint import load_checkpoint, load_weights
from engine.distributed import DistEnv, all_gather_objects, interleave
from engine.logger import RunWriter, labelled_grid
from engine.optim import steps_per_iteration
from engine.predict import MapRule, final_maps, forward_probs
from engine.state import TrainState
from evaluation.maps import MapIssues, read_mask, read_photo
from evaluation.metrics import CODMetrics, ImageScores, image_scores
from evaluation.names import ordered_keys
from models.temporal import AnchorFrames, anchors, clip_frames

log = logging.getLogger("train")

GRID_COLUMNS = ("image", "mask", "prediction", "coarse map")


@dataclass
class Shard:
    """One rank's share of an evaluation: per-image scores in loader order, the summed loss, and
    the count of maps holding NaN/Inf (a diverged model, whose scores mean nothing)."""

    scores: list[ImageScores]
    loss_sum: float
    n_loss: int
    nonfinite: int
    grid: torch.Tensor | None  # [3, H', W']: image | mask | prediction | coarse map, one row per image


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    loss_fn: nn.Module,
    precision: Precision,
    writer: RunWriter,
    device: torch.device,
    grid_images: int = 4,
    rule: MapRule | None = None,
    score_maps: bool = True,
    ccm: bool = False,
    hce: bool = False,
) -> Shard:
    """Score this process's share of ``loader``: maps at each mask's original size (made by
    ``rule``), the training loss on the masks at the training size, and an image grid of the first
    batch. ``score_maps=False`` (augmented validation images, which the masks on disk do not
    match) computes the loss alone. ``ccm`` / ``hce``: score those too (``train.best_metric`` names
    one; the CCM reads each photo again at its mask's size)."""
    model.eval()
    scores, grid, nonfinite = [], None, torch.zeros((), dtype=torch.int64, device=device)
    loss_sum, n_loss = torch.zeros((), device=device), 0
    for batch in writer.bar(loader, desc="validate"):
        x, mask, net = batch["image"].to(device, non_blocking=True), batch["mask"], model
        if x.dim() == 5:  # clips: each is scored on its anchor frame
            net, mask = AnchorFrames(model), anchors(mask.flatten(0, 1), x.shape[1])
        outputs, prob = forward_probs(net, x, precision)
        loss_sum += loss_fn(outputs, mask.to(device, non_blocking=True))[0].detach() * x.shape[0]
        n_loss += x.shape[0]
        if grid is None:
            k, shown = min(grid_images, x.shape[0]), anchors(*clip_frames(x))
            gray = [mask[:k].to(device), prob[:k], torch.sigmoid(outputs[0][:k].float())]
            tiles = torch.stack([shown[:k].float(), *(g.expand(-1, 3, -1, -1) for g in gray)], dim=1)
            grid = labelled_grid(tiles, GRID_COLUMNS)
        nonfinite += (~torch.isfinite(prob.flatten(1))).any(1).sum()
        if not score_maps:
            continue
        gts = [read_mask(Path(path)) for path in batch["mask_path"]]
        for path, gt in zip(batch["mask_path"], gts):
            if gt is None:  # vanished or damaged since the dataset was built
                log.warning("validation mask %s is unreadable: image skipped", path)
        keep = [j for j, gt in enumerate(gts) if gt is not None]
        maps = final_maps(net, x[keep], prob[keep], [gts[j].shape for j in keep], precision, rule or MapRule())
        for m, j in zip(maps, keep):
            photo = read_photo(Path(batch["image_path"][j]), gts[j].shape, MapIssues()) if ccm else None
            scores.append(image_scores(m, gts[j], photo, hce))
    return Shard(scores, float(loss_sum), n_loss, int(nonfinite), grid)


def merge(shard: Shard) -> tuple[dict, int]:
    """Gather every rank's shard: (the metrics with the mean ``loss``, NaN/Inf maps in all).

    Rank r scored images r, r + W, r + 2W, ...: they are interleaved back to the dataset order."""
    shards = all_gather_objects((shard.scores, shard.loss_sum, shard.n_loss, shard.nonfinite))
    metrics = CODMetrics()
    for scores in interleave([s[0] for s in shards]):
        metrics.add(scores)
    results = metrics.results() if len(metrics) else {"n_images": 0}  # no maps: the loss alone
    results["loss"] = sum(s[1] for s in shards) / max(1, sum(s[2] for s in shards))
    return results, sum(s[3] for s in shards)


def validate(state: TrainState, model, loader, loss_fn, precision: Precision, writer: RunWriter) -> bool:
    """Score the validation split into ``state.metrics`` (a plateau scheduler steps on its loss);
    returns whether it is a new best (:meth:`TrainState.new_best`; never with
    ``train.best_metric=train_loss``, which the epoch's training loss decides). Maps holding NaN/Inf
    (a diverged model) never are."""
    cfg = state.cfg
    shard = evaluate(
        model,
        loader,
        loss_fn,
        precision,
        writer,
        state.env.device,
        rule=MapRule.of(cfg),
        score_maps=not cfg.data.val_augment,
        ccm=cfg.train.best_metric == "CCM",
        hce=cfg.train.best_metric == "HCE",
    )
    metrics, nonfinite = merge(shard)
    if not steps_per_iteration(state.scheduler):
        state.scheduler.step(metrics["loss"])
    writer.scalars("val", {k: v for k, v in metrics.items() if k != "n_images"}, state.step)
    if shard.grid is not None:
        writer.image("val/image_mask_pred_coarse", shard.grid, state.step)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n_images")
    log.info("epoch %d validation: %s", state.epoch, shown)
    if nonfinite:
        log.error("epoch %d: %d validation maps hold NaN/Inf: not a candidate for best.pth", state.epoch, nonfinite)
    state.metrics = metrics
    return not nonfinite and state.new_best(metrics)


def test_at_end(
    model, cfg: DictConfig, loss_fn, precision: Precision, writer: RunWriter, env: DistEnv, step: int, best: Path | None
) -> None:
    """Score ``data.test_sets`` with the ``best`` checkpoint (the final weights when None) and log
    ``test/<Benchmark>/<metric>`` at the last step: the table test.py would print, in TensorBoard."""
    all_gather_objects(None)  # every rank waits until the main process has written best.pth
    if best is not None:
        load_weights(model, load_checkpoint(best, required=("model",))["model"], best)
    which = best.name if best is not None else "the final weights"
    image_sets, video_sets = datasets.split_test_sets(cfg.data.root, list(cfg.data.test_sets))
    if video_sets:
        log.info("%s: scored by test.py --ckpt (per sequence, SLT-Net's protocol)", ", ".join(video_sets))
    for bench, ds in (datasets.build_test_sets(cfg, image_sets) if image_sets is not None else {}).items():
        loader = datasets.build_loader(ds, cfg, train=False, distributed=env.distributed)
        shard = evaluate(model, loader, loss_fn, precision, writer, env.device, rule=MapRule.of(cfg))
        metrics, _ = merge(shard)
        keys = ordered_keys(metrics)
        writer.scalars(f"test/{bench}", {k: metrics[k] for k in keys}, step)
        if shard.grid is not None:
            writer.image(f"test/{bench}/image_mask_pred_coarse", shard.grid, step)
        shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys)
        log.info("test %s (%s, %d images): %s", bench, which, metrics["n_images"], shown)
