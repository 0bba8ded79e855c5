"""Train E2Net-DINOv3.

    python train.py --config e2net_dinov3.yaml [key=value ...]
    torchrun --standalone --nproc-per-node=4 train.py --config e2net_dinov3.yaml [key=value ...]
    (several machines, SLURM, restarts after a failure: docs/distributed.md)

The run folder (train.run_dir, default checkpoint/<train.name>) receives config.yaml (the
resolved config), last.pth (every epoch; also every train.save_every_steps steps), best.pth (best
train.best_metric: on validation, or the lowest mean training loss of an epoch), final.pth (the
weights after the last epoch), train.log, tb/ (TensorBoard: losses, validation metrics and loss,
labelled image grids, the config as text, and test/<Benchmark>/<metric> at the end when
data.test_sets names benchmarks)
and, while a run writes there, train.lock (a second train.py on the folder is refused). The same
command continues a killed run (train.resume=auto). SIGTERM, SIGUSR1 and Ctrl-C stop at the next
optimizer step with the position inside the epoch saved in last.pth (exit 0; 130 for Ctrl-C); the
resumed run continues from that batch exactly. At the end it prints the TensorBoard command that
shows every logged image (engine.logger.TENSORBOARD_COMMAND). Every key=value and its meaning:
config_schema.py (the schema, a comment per key) and the README's "Config reference".
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

import datasets
from build import build_loss, build_model, check_config
from config import BestMetric, ConfigError, Scheduler, load_config, save_config
from engine.amp import NonFiniteGuard, resolve_precision
from engine.checkpoint.run import RunCheckpoints, find_resume, read_resume
from engine.cli import add_config_arguments, error_line
from engine.distributed import (
    DistEnv,
    cleanup_distributed,
    finish_collectives,
    restart_store_problem,
    setup_distributed,
    wrap_ddp,
)
from engine.errors import USER_ERRORS
from engine.logger import TENSORBOARD_COMMAND, RunWriter
from engine.optim import build_plateau_scheduler, build_scheduler, optimizer_for
from engine.rng import seed_everything
from engine.run_folder import RunLock, open_run_dir
from engine.state import TrainState
from engine.step import train_one_epoch
from engine.stop import StopRequest
from engine.trained import init_from
from engine.validation import test_at_end, validate

log = logging.getLogger("train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, default="e2net_dinov3.yaml")
    args = parser.parse_args(argv)
    with StopRequest() as stop:  # from here on Ctrl-C, SIGTERM and SIGUSR1 stop at a safe point
        try:  # every check that needs no model, before anything is written
            cfg = load_config(args.config, args.overrides)
            cfg.train.run_dir = cfg.train.run_dir or f"checkpoint/{cfg.train.name}"
            check_config(cfg)  # the config as built: build_model will not check it again
            find_resume(cfg.train.resume, Path(cfg.train.run_dir))
        except (*USER_ERRORS, ValueError) as err:
            print(f"error: {error_line(err)}", file=sys.stderr)
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
                train(cfg, env, stop)
            finish_collectives()
        except USER_ERRORS as err:
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


def train(cfg: DictConfig, env: DistEnv, stop: StopRequest) -> None:
    """config -> data -> model -> optimizer -> resume -> epochs -> end-of-run test."""
    t, run_dir = cfg.train, Path(cfg.train.run_dir)
    seed_everything(t.seed + env.rank, t.deterministic)
    resume = read_resume(t.resume, run_dir)  # read first: a bad checkpoint fails before anything is built
    # Before the model (frozen-weight storage follows it) and before config.yaml, which records it.
    precision = resolve_precision(cfg, env.device, resumed=resume.config if resume else None)
    if env.is_main:
        save_run_config(cfg, run_dir)

    train_loader, val_loader = build_data(cfg, env)
    model = build_model(cfg).to(env.device)
    if t.init_from and resume is None:  # a new run from trained weights; a resumed one has its own
        init_from(model, cfg)
    loss_fn = build_loss(cfg)
    state = build_state(cfg, model, len(train_loader), precision.grad_scaler(), env)
    n_params = sum(p.numel() for g in state.optimizer.param_groups for p in g["params"])
    log.info(
        "%d training images (%d steps/epoch), %s validation images, %.2fM trainable parameters, amp=%s, "
        "%d process(es) on %s", len(train_loader.dataset), math.ceil(len(train_loader) / t.accum_steps),
        len(val_loader.dataset) if val_loader else 0, n_params / 1e6, precision.amp, env.world_size, env.device,
    )  # fmt: skip
    checkpoints = RunCheckpoints(state)
    if resume is not None:
        checkpoints.restore(resume, len(train_loader))
        log.info("resumed from %s: %s done, best %s %s", resume.path, state.position, t.best_metric, state.best)
    elif checkpoints.last.is_file():
        log.warning("train.resume is empty: starting fresh, %s will be overwritten", checkpoints.last)

    net = model
    if env.distributed:
        net = wrap_ddp(model, env, static_graph=t.ddp_static_graph)
        if env.is_main and (problem := restart_store_problem()):
            log.warning("%s", problem)
    writer = RunWriter(run_dir, env.is_main, purge_step=state.step + 1 if resume else None)
    writer.text("config", OmegaConf.to_yaml(cfg), state.step)
    guard = NonFiniteGuard(t.max_nonfinite, env.device)
    for epoch in range(state.epoch, t.epochs):
        if (t.max_steps and state.step >= t.max_steps) or stop.agreed(env.device):
            break
        datasets.set_epoch(train_loader, epoch, state.batch)
        train_one_epoch(
            net,
            train_loader,
            loss_fn,
            state,
            precision=precision,
            guard=guard,
            writer=writer,
            stop=stop,
            checkpoints=checkpoints,
        )
        if end_of_epoch(state, checkpoints, val_loader, loss_fn, precision, writer, stop, epoch):
            break

    if cfg.data.test_sets and not stop.signum and state.batch == 0:  # a finished run, not a stopped one
        test_at_end(model, cfg, loss_fn, precision, writer, env, state.step, checkpoints.best())
    writer.close()
    report_end(state, stop)


def report_end(state: TrainState, stop: StopRequest) -> None:
    """Where a stopped run can continue from, or what a finished one achieved and how to look at it."""
    t, env, run_dir = state.cfg.train, state.env, Path(state.cfg.train.run_dir)
    if stop.signum:
        saved = run_dir / "last.pth" if (run_dir / "last.pth").is_file() else "nothing saved yet:"
        log.warning("stopped by %s: %s holds %s; run the same command to continue", stop.name, saved, state.position)
        return
    log.info("done: %d steps; best %s = %s in %s", state.step, t.best_metric, state.best, run_dir)
    if env.device.type == "cuda":
        log.info("peak GPU memory %.2f GiB", torch.cuda.max_memory_allocated(env.device) / 2**30)
    log.info("TensorBoard: %s", TENSORBOARD_COMMAND.format(logdir=f"{run_dir.parent}/"))


def save_run_config(cfg: DictConfig, run_dir: Path) -> None:
    try:
        save_config(cfg, run_dir / "config.yaml")
    except OSError as err:
        raise ConfigError(f"config key 'train.run_dir': cannot write '{run_dir / 'config.yaml'}' ({err})") from None


def build_data(cfg: DictConfig, env: DistEnv) -> tuple:
    """(training loader, validation loader or None). Benchmarks to score at the end are found now:
    a wrong name fails before training, not hours later."""
    if cfg.data.test_sets:
        datasets.split_test_sets(cfg.data.root, list(cfg.data.test_sets))  # video benchmarks: test.py scores them
    train_ds, val_ds = datasets.build_train_val(cfg)
    train_loader = datasets.build_loader(train_ds, cfg, train=True, distributed=env.distributed)
    if val_ds is None or len(val_ds) == 0:
        if cfg.train.best_metric != BestMetric.train_loss:
            log.warning("no validation split (data.val_fraction=0 and no data.val_set): best.pth is not written")
        return train_loader, None
    return train_loader, datasets.build_loader(val_ds, cfg, train=False, distributed=env.distributed)


def build_state(cfg: DictConfig, model, batches_per_epoch: int, scaler, env: DistEnv) -> TrainState:
    """AdamW (the pretrained trunk's blocks and LoRA learn slower) and the schedule: per iteration
    over all epochs (cosine; train.max_steps only stops early), held for each epoch (cosine_epoch)
    or per validation (plateau)."""
    t = cfg.train
    optimizer = optimizer_for(model, t, env.device)
    if t.scheduler == Scheduler.plateau:
        scheduler = build_plateau_scheduler(optimizer, t.plateau_factor, t.plateau_patience, t.min_lr_ratio)
    else:
        steps = math.ceil(batches_per_epoch / t.accum_steps)  # optimizer steps per epoch
        unit = steps if t.scheduler == Scheduler.cosine_epoch else 1
        total = t.epochs * steps // unit
        warmup = min(total, round(t.warmup_epochs * steps / unit))
        scheduler = build_scheduler(optimizer, total, warmup, t.min_lr_ratio, steps_per_unit=unit)
    return TrainState(cfg, model, optimizer, scheduler, scaler, env)


def end_of_epoch(
    state: TrainState,
    checkpoints: RunCheckpoints,
    val_loader,
    loss_fn,
    precision,
    writer,
    stop: StopRequest,
    epoch: int,
) -> bool:
    """Check the weights, validate when due, save the checkpoints (best.pth when this epoch improved
    train.best_metric); returns whether to stop."""
    t, env = state.cfg.train, state.env
    checkpoints.check_finite()  # a diverged model is neither validated nor saved
    inside = state.epoch == epoch  # stopped inside the epoch (a signal or train.max_steps): keep the position
    finished = state.epoch == t.epochs or bool(t.max_steps and state.step >= t.max_steps)
    improved = False
    if val_loader is not None and not inside and (state.epoch % t.val_interval == 0 or finished):
        datasets.set_epoch(val_loader, state.epoch)  # each epoch's own draws under data.val_augment
        improved = validate(state, state.model, val_loader, loss_fn, precision, writer)
    if not inside:
        train_loss = state.epoch_loss()  # every rank: the sums are gathered
        writer.scalars("train", {"epoch_loss": train_loss}, state.step)
        if t.best_metric == BestMetric.train_loss and math.isfinite(train_loss):
            state.metrics = {**(state.metrics or {}), "train_loss": train_loss}
            improved = state.new_best(state.metrics)
    checkpoints.save_epoch_end(improved)
    return inside or finished or stop.agreed(env.device)


if __name__ == "__main__":
    sys.exit(main())
