"""Train E2Net-DINOv3.

    python train.py --config e2net_dinov3.yaml [key=value ...]
    torchrun --nproc_per_node=4 train.py --config e2net_dinov3.yaml [key=value ...]

The run folder (train.run_dir, default checkpoint/<train.name>) receives config.yaml (the
resolved config), last.pth (every epoch), best.pth (best validation train.best_metric),
train.log, tb/ (TensorBoard: losses, validation metrics and loss, labelled image grids, the
config as text, and test/<Benchmark>/<metric> at the end when data.test_sets names benchmarks)
and, while a run writes there, train.lock (a second train.py on the folder is refused). The same
command continues a killed run (train.resume=auto). View the runs with the command printed at the
end (engine.logger.TENSORBOARD_COMMAND). SIGTERM, SIGUSR1 and Ctrl-C stop at the next optimizer
step with the position inside the epoch saved in last.pth (exit 0; 130 for Ctrl-C); the resumed
run continues from that batch exactly.
Every key=value and its meaning: config.py (the schema, a comment per key) and the README's
"Config reference".
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.contrib.logging import logging_redirect_tqdm

import datasets
import evaluation
import models
from config import METRIC_KEYS, ConfigError, Scheduler, check_encoder, load_config, save_config
from engine.amp import NonFiniteGuard, Precision, resolve_precision, step_optimizer
from engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.distributed import DistEnv, all_gather_objects, cleanup_distributed, setup_distributed
from engine.logger import TENSORBOARD_COMMAND, RunWriter, error_line, labelled_grid
from engine.optim import build_plateau_scheduler, build_scheduler, optimizer_for, steps_per_iteration
from engine.predict import forward_probs, to_uint8
from engine.resume import BEST_KEYS, RESUME_KEYS, TrainState, find_resume
from engine.rng import seed_everything
from engine.run_folder import RunLock, open_run_dir
from engine.stop import StopRequest
from engine.weights import first_nonfinite, load_weights
from evaluation.tables import LOWER_IS_BETTER

log = logging.getLogger("train")


def train_one_epoch(
    net, loader, loss_fn, state: TrainState, precision: Precision, guard: NonFiniteGuard, writer, stop
) -> None:
    """One pass over ``loader`` from batch ``state.batch`` of epoch ``state.epoch``; advances the state.

    Gradients of ``accum_steps`` batches are summed before each optimizer step; a step whose
    gradient is non-finite is skipped. The host waits for the device only every ``log_interval``
    steps, where the scalars are read. Ends early, at a step boundary, on ``train.max_steps`` or a
    stop request (``state.batch`` then says where the epoch was left); else ``state.epoch`` advances.
    """
    t, env, optimizer, scaler = state.cfg.train, state.env, state.optimizer, state.scaler
    device = env.device
    net.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    accum, start = t.accum_steps, state.batch
    n = start + len(loader)  # batches in the whole epoch
    full_groups_end = n - n % accum  # batches after this form a shorter last group
    sums: dict[str, torch.Tensor] = {}
    group_loss = torch.zeros((), device=device)
    micro, images, steps_in_log, tic = 0, 0, 0, time.perf_counter()
    bar = writer.bar(loader, total=n, initial=start, desc=f"epoch {state.epoch + 1}/{t.epochs}")
    for i, batch in enumerate(bar, start=start):
        x, y = datasets.training_inputs(batch, device)  # data.augment_on=device augments here
        group_size = accum if i < full_groups_end else n - full_groups_end
        last_of_group = (i + 1) % accum == 0 or i + 1 == n
        # DDP all-reduces gradients on every backward; only the last batch of a group needs it.
        sync = contextlib.nullcontext() if last_of_group or not isinstance(net, DDP) else net.no_sync()
        with sync:
            with precision.autocast():
                outputs = net(x)
                loss, terms = loss_fn(outputs, y)
            scaler.scale(loss / group_size).backward()
        if scaler.is_enabled():  # only the fp16 skip test reads it
            group_loss += loss.detach() / group_size
        for k, v in {"loss": loss, **terms}.items():
            sums[k] = sums.get(k, 0) + v.detach()
        micro += 1
        images += x.shape[0]
        if not last_of_group:
            continue

        if scaler.is_enabled():
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if t.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        else:  # no clipping, but the norm still decides the finite check and is logged
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        # The gradient norm is the same on every rank after DDP's all-reduce, so all ranks skip together.
        finite = torch.isfinite(group_loss) if scaler.is_enabled() else torch.isfinite(grad_norm)
        step_optimizer(optimizer, scaler, finite)
        optimizer.zero_grad(set_to_none=True)
        if steps_per_iteration(state.scheduler):  # a plateau scheduler steps after validation instead
            state.scheduler.step()
        guard.update(finite)
        sums["grad_norm"] = sums.get("grad_norm", 0) + torch.where(finite, grad_norm, 0.0)
        group_loss.zero_()
        state.step, state.batch = state.step + 1, i + 1
        steps_in_log += 1
        logged = state.step % t.log_interval == 0 or i + 1 == n
        # Under DDP the ranks agree on stopping where the host synchronises anyway (the log steps).
        stop_now = bool(t.max_steps and state.step >= t.max_steps) or (
            (logged or not env.distributed) and stop.agreed(device)
        )
        if logged or stop_now:
            skipped = guard.check()  # one host sync for all the scalars below
            values = dict(zip(sums, torch.stack([v.float() for v in sums.values()]).tolist()))
            scalars = {k: v / (steps_in_log if k == "grad_norm" else micro) for k, v in values.items()}
            scalars["images_per_s"] = images * env.world_size / (time.perf_counter() - tic)
            for g in optimizer.param_groups:
                scalars["lr" if g["name"].startswith("new") else "lr_pretrained"] = g["lr"]
            scalars["skipped_steps"] = skipped
            writer.scalars("train", scalars, state.step)
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", img_s=f"{scalars['images_per_s']:.1f}")
            log.info(
                "epoch %d step %d  %s",
                state.epoch + 1,
                state.step,
                "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()),
            )
            sums, micro, images, steps_in_log, tic = {}, 0, 0, 0, time.perf_counter()
        if stop_now:
            break
    bar.close()
    # A signal at the last batch leaves batch == n: the resumed run validates this epoch.
    if state.batch == n and not stop.signum:
        state.epoch, state.batch = state.epoch + 1, 0


@torch.no_grad()
def evaluate(
    model, loader, loss_fn, precision: Precision, writer: RunWriter, device: torch.device, grid_images: int = 4
) -> tuple[list, tuple[float, int, int], torch.Tensor | None]:
    """Per-image COD scores of this process's share of ``loader``, maps scored at the mask's original size.

    Returns a list of ``evaluation.ImageScores`` (merge them with :func:`merge_scores`); the
    training loss summed over these images (on the masks at the training size), their count and
    the number of maps holding NaN/Inf (a diverged model, whose scores mean nothing); and an image
    grid [3, H', W'] of the first batch: one row per image, columns image | mask | prediction | coarse map.
    """
    model.eval()
    scores, grid, nonfinite = [], None, torch.zeros((), dtype=torch.int64, device=device)
    loss_sum, n_loss = torch.zeros((), device=device), 0
    for batch in writer.bar(loader, desc="validate"):
        x = batch["image"].to(device, non_blocking=True)
        outputs, prob = forward_probs(model, x, precision)
        loss_sum += loss_fn(outputs, batch["mask"].to(device, non_blocking=True))[0].detach() * x.shape[0]
        n_loss += x.shape[0]
        if grid is None:
            k = min(grid_images, x.shape[0])
            gray = [batch["mask"][:k].to(device), prob[:k], torch.sigmoid(outputs[0][:k].float())]
            tiles = torch.stack([x[:k].float(), *(g.expand(-1, 3, -1, -1) for g in gray)], dim=1)
            grid = labelled_grid(tiles, GRID_COLUMNS)
        nonfinite += (~torch.isfinite(prob.flatten(1))).any(1).sum()
        for j in range(x.shape[0]):
            gt = evaluation.read_mask(Path(batch["mask_path"][j]))
            if gt is None:  # vanished or damaged since the dataset was built
                log.warning("validation mask %s is unreadable: image skipped", batch["mask_path"][j])
                continue
            scores.append(evaluation.image_scores(to_uint8(prob[j : j + 1], gt.shape), gt))
    return scores, (float(loss_sum), n_loss, int(nonfinite)), grid


GRID_COLUMNS = ("image", "mask", "prediction", "coarse map")


def merge_scores(shards: list[list]) -> dict:
    """Rank r scored images r, r + W, r + 2W, ...: interleave back to the dataset order, then reduce."""
    metrics = evaluation.CODMetrics()
    for i in range(max(map(len, shards))):
        for shard in shards:
            if i < len(shard):
                metrics.add(shard[i])
    return metrics.results()


def is_better(value: float, best: float | None, metric: str) -> bool:
    return best is None or (value < best if metric in LOWER_IS_BETTER else value > best)


def test_at_end(
    model, cfg, loss_fn, precision: Precision, writer: RunWriter, env: DistEnv, step: int, best: Path | None
) -> None:
    """Score ``data.test_sets`` with the ``best`` checkpoint (the final weights when None) and log
    ``test/<Benchmark>/<metric>`` at the last step: the table test.py would print, in TensorBoard."""
    all_gather_objects(None)  # every rank waits until the main process has written best.pth
    if best is not None:
        load_weights(model, load_checkpoint(best, required=("model",))["model"], best)
    which = best.name if best is not None else "the final weights"
    for bench, ds in datasets.build_test_sets(cfg).items():
        loader = datasets.build_loader(ds, cfg, train=False, distributed=env.distributed)
        shard, _, grid = evaluate(model, loader, loss_fn, precision, writer, env.device)
        metrics = merge_scores(all_gather_objects(shard))
        writer.scalars(f"test/{bench}", {k: metrics[k] for k in METRIC_KEYS}, step)
        if grid is not None:
            writer.image(f"test/{bench}/image_mask_pred_coarse", grid, step)
        shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in METRIC_KEYS)
        log.info("test %s (%s, %d images): %s", bench, which, metrics["n_images"], shown)


def run(cfg, env: DistEnv, stop: StopRequest) -> None:
    t = cfg.train
    run_dir = Path(t.run_dir)
    seed_everything(t.seed + env.rank, t.deterministic)
    ckpt_path = find_resume(t.resume, run_dir)  # read first: a bad checkpoint fails before anything is built
    ckpt = load_checkpoint(ckpt_path, required=RESUME_KEYS) if ckpt_path else None
    # Before the model (frozen-weight storage follows it) and before config.yaml, which records it.
    precision = resolve_precision(cfg, env.device, resumed=ckpt.get("config") if ckpt else None)
    if env.is_main:
        try:
            save_config(cfg, run_dir / "config.yaml")
        except OSError as err:
            raise ConfigError(f"config key 'train.run_dir': cannot write '{run_dir / 'config.yaml'}' ({err})") from None

    # ---- data and model
    if cfg.data.test_sets:  # scored after training (test_at_end): a wrong name fails now, not hours later
        datasets.find_benchmark_dirs(cfg.data.root, list(cfg.data.test_sets))
    train_ds, val_ds = datasets.build_train_val(cfg)
    train_loader = datasets.build_loader(train_ds, cfg, train=True, distributed=env.distributed)
    has_val = val_ds is not None and len(val_ds) > 0
    val_loader = datasets.build_loader(val_ds, cfg, train=False, distributed=env.distributed) if has_val else None
    if not has_val:
        log.warning("no validation split (data.val_fraction=0 and no data.val_set): best.pth is not written")
    model = models.build_model(cfg).to(env.device)
    loss_fn = models.build_loss(cfg)

    # ---- optimisation: per-iteration schedule over all epochs (train.max_steps only stops early)
    steps_per_epoch = math.ceil(len(train_loader) / t.accum_steps)
    total_steps = t.epochs * steps_per_epoch
    optimizer = optimizer_for(model, t, env.device)  # the pretrained trunk (blocks, LoRA) learns slower
    if t.scheduler == Scheduler.plateau:
        scheduler = build_plateau_scheduler(optimizer, t.plateau_factor, t.plateau_patience, t.min_lr_ratio)
    else:
        scheduler = build_scheduler(
            optimizer, total_steps, min(total_steps, round(t.warmup_epochs * steps_per_epoch)), t.min_lr_ratio
        )
    state = TrainState(cfg, model, optimizer, scheduler, precision.grad_scaler(), env)
    guard = NonFiniteGuard(t.max_nonfinite, env.device)
    n_train = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    log.info(
        "%d training images (%d steps/epoch), %s validation images, %.2fM trainable parameters, "
        "amp=%s, %d process(es) on %s",
        len(train_ds),
        steps_per_epoch,
        len(val_ds) if has_val else 0,
        n_train / 1e6,
        precision.amp,
        env.world_size,
        env.device,
    )

    # ---- resume
    if ckpt is not None:
        state.load_state_dict(ckpt, ckpt_path, len(train_loader))
        log.info("resumed from %s: %s done, best %s %s", ckpt_path, state.position, t.best_metric, state.best)
    elif (run_dir / "last.pth").is_file():
        log.warning("train.resume is empty: starting fresh, %s will be overwritten", run_dir / "last.pth")

    net = (
        DDP(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None, gradient_as_bucket_view=True)
        if env.distributed
        else model
    )
    writer = RunWriter(run_dir, env.is_main, purge_step=state.step + 1 if ckpt else None)
    writer.text("config", OmegaConf.to_yaml(cfg), state.step)

    # ---- loop
    for epoch in range(state.epoch, t.epochs):
        if (t.max_steps and state.step >= t.max_steps) or stop.agreed(env.device):
            break
        datasets.set_epoch(train_loader, epoch, state.batch)
        train_one_epoch(net, train_loader, loss_fn, state, precision, guard, writer, stop)
        bad = first_nonfinite(model.trainable_state_dict())
        if bad:  # a diverged model is never saved (last.pth keeps the last finite state)
            raise FloatingPointError(
                f"weight '{bad}' is NaN/Inf after {state.step} steps: the run has diverged and stops here; "
                f"{run_dir / 'last.pth'} keeps the last finite state. Lower train.lr"
            )
        inside = state.epoch == epoch  # stopped inside the epoch (a signal or train.max_steps): keep the position
        finished = state.epoch == t.epochs or bool(t.max_steps and state.step >= t.max_steps)
        improved = False
        if has_val and not inside and (state.epoch % t.val_interval == 0 or finished):
            improved = validate(state, model, val_loader, loss_fn, precision, writer)
        checkpoint = state.state_dict()  # every rank: the random states are gathered
        if env.is_main:
            if improved:  # before last.pth: a kill in between re-runs this epoch rather than lose best.pth
                save_checkpoint(run_dir / "best.pth", {k: checkpoint[k] for k in BEST_KEYS})
                log.info("new best %s %.4f -> %s", t.best_metric, state.best, run_dir / "best.pth")
            save_checkpoint(run_dir / "last.pth", checkpoint)
        if inside or finished or stop.agreed(env.device):
            break
    if cfg.data.test_sets and not stop.signum and state.batch == 0:  # a finished run, not a stopped one
        # best is None when no checkpoint was chosen on validation in this run (or the one resumed).
        best = run_dir / "best.pth" if state.best is not None else None
        test_at_end(model, cfg, loss_fn, precision, writer, env, state.step, best)
    writer.close()
    if stop.signum:
        saved = run_dir / "last.pth" if (run_dir / "last.pth").is_file() else "nothing saved yet:"
        log.warning("stopped by %s: %s holds %s; run the same command to continue", stop.name, saved, state.position)
    else:
        log.info("done: %d steps; best validation %s = %s in %s", state.step, t.best_metric, state.best, run_dir)
        log.info("TensorBoard: %s", TENSORBOARD_COMMAND.format(logdir=f"{run_dir.parent}/"))


def validate(state: TrainState, model, loader, loss_fn, precision: Precision, writer: RunWriter) -> bool:
    """Score the validation split into ``state.metrics`` (a plateau scheduler steps on its loss);
    returns whether it is a new best. Maps holding NaN/Inf (a diverged model) never are."""
    t = state.cfg.train
    shard, loss_shard, grid = evaluate(model, loader, loss_fn, precision, writer, state.env.device)
    metrics = merge_scores(all_gather_objects(shard))
    losses = all_gather_objects(loss_shard)
    metrics["loss"] = sum(s for s, _, _ in losses) / max(1, sum(n for _, n, _ in losses))
    nonfinite = sum(b for _, _, b in losses)
    if not steps_per_iteration(state.scheduler):
        state.scheduler.step(metrics["loss"])
    writer.scalars("val", {k: v for k, v in metrics.items() if k != "n_images"}, state.step)
    if grid is not None:
        writer.image("val/image_mask_pred_coarse", grid, state.step)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n_images")
    log.info("epoch %d validation: %s", state.epoch, shown)
    if nonfinite:
        log.error("epoch %d: %d validation maps hold NaN/Inf: not a candidate for best.pth", state.epoch, nonfinite)
    state.metrics = metrics
    value = metrics[t.best_metric]
    if nonfinite or not math.isfinite(value) or not is_better(value, state.best, t.best_metric):
        return False
    state.best = value
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="e2net_dinov3.yaml", help="YAML recipe (default: e2net_dinov3.yaml)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.lr=2e-4 (every key: config.py, README 'Config reference')",
    )
    args = p.parse_args(argv)
    with StopRequest() as stop:  # from here on Ctrl-C, SIGTERM and SIGUSR1 stop at a safe point
        try:
            cfg = load_config(args.config, args.overrides)
            check_encoder(cfg)  # before anything is built: sizes tile into patches, tapped blocks exist
            cfg.train.run_dir = cfg.train.run_dir or f"checkpoint/{cfg.train.name}"
            find_resume(cfg.train.resume, Path(cfg.train.run_dir))  # before anything is written
        except (ConfigError, FileNotFoundError, ValueError, ImportError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        run_dir = Path(cfg.train.run_dir)
        env = setup_distributed()
        lock = RunLock(run_dir)
        try:
            try:
                open_run_dir(run_dir, env, lock)
            except ConfigError as err:  # no train.log to write to
                print(f"error: {err}", file=sys.stderr)
                return 1
            with logging_redirect_tqdm():
                run(cfg, env, stop)
        except (ConfigError, CheckpointError, datasets.DatasetError, datasets.BadFile, FloatingPointError) as err:
            log.error("%s", error_line(err))
            return 1
        except KeyboardInterrupt:
            log.error("interrupted by a second Ctrl-C: stopped at once; last.pth holds the last saved position")
            return 130
        finally:
            lock.release()
            cleanup_distributed()
    # A scheduler's stop request is an orderly end (the job is requeued); Ctrl-C is the shell's 130.
    return 130 if stop.signum == signal.SIGINT else 0


if __name__ == "__main__":
    sys.exit(main())
