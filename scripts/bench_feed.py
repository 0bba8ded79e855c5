"""Does the data loader keep the device busy? Real training steps fed by the real DataLoader.

    python scripts/bench_feed.py --encoder DIR [--device cuda] [--batch 16] [--workers 8] \
        [--augment-on workers|device] [--steps 12] [config overrides ...]

Generates 800x600 JPEGs (as scripts/bench_data.py), builds the training set and loader exactly as
train.py does (``data.augment_on``, ``train.num_workers``, pinned memory on CUDA), and runs
training steps (forward + loss under the config's autocast, backward, AdamW) without
synchronising between them. ``wait_share`` is the fraction of the wall time the host spent blocked
in ``next(loader)``: about 0 when the loader keeps up (the host runs ahead of the device), and
the share of time the device starved otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bench_feed(
    config: str,
    overrides: list[str],
    device: str,
    batch: int,
    size: int,
    workers: int,
    augment_on: str,
    steps: int = 12,
    warmup: int = 3,
    n_images: int = 0,
    source: tuple[int, int] = (600, 800),
) -> dict:
    """``{"wait_share": float, "images_per_s": float, "steps": int, ...}`` of ``steps`` timed steps, fed
    from ``n_images`` (0: max(64, 4 x batch)) generated JPEGs of ``source`` = (H, W) pixels."""
    import torch

    import datasets
    from build import build_loss, build_model
    from config import load_config
    from datasets.device_augment import opencv_pool_stopped
    from engine.amp import resolve_precision
    from engine.step import optimisation_step, step_arguments
    from scripts.bench_data import write_jpegs

    dev = torch.device(device)
    with tempfile.TemporaryDirectory(prefix="bench-feed-") as tmp:
        with opencv_pool_stopped():  # the DataLoader workers fork later
            write_jpegs(Path(tmp), n_images or max(64, 4 * batch), *source)
        cfg = load_config(
            config,
            [
                *overrides,
                f"data.root={tmp}",
                f"data.image_size={size}",
                "data.multi_scale=[]",
                "data.val_fraction=0",
                f"data.augment_on={augment_on}",
                f"train.batch_size={batch}",
                f"train.num_workers={workers}",
            ],
        )
        precision = resolve_precision(cfg, dev)  # train.amp=auto -> this device's choice, before building
        train_ds, _ = datasets.build_train_val(cfg)
        loader = datasets.build_loader(train_ds, cfg, train=True)
        model = build_model(cfg).to(dev).train()
        step_args = step_arguments(cfg.train, model, build_loss(cfg), precision)
        epoch = 0
        datasets.set_epoch(loader, epoch)  # the training sampler refuses a pass it was not told the epoch of
        it = iter(loader)

        def next_batch():
            nonlocal epoch, it
            try:
                return next(it)
            except StopIteration:
                epoch += 1
                datasets.set_epoch(loader, epoch)
                it = iter(loader)
                return next(it)

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        wait = images = 0.0
        for k in range(warmup + steps):
            if k == warmup:  # workers started, kernels chosen: time from here
                sync()
                wait, images, t0 = 0.0, 0, time.perf_counter()
            tw = time.perf_counter()
            b = next_batch()
            wait += time.perf_counter() - tw
            images += optimisation_step(model, [datasets.training_inputs(b, dev)], 1, **step_args).images
        sync()
        wall = time.perf_counter() - t0
    return {
        "wait_share": wait / wall,
        "images_per_s": images / wall,
        "step_s": wall / steps,
        "steps": steps,
        "batch": batch,
        "workers": workers,
        "augment_on": augment_on,
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    ap.add_argument("--config", default=str(ROOT / "e2net_dinov3.yaml"))
    ap.add_argument("--encoder", required=True, help="a saved DINOv3 folder (scripts/make_tiny_dinov3.py)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--augment-on", default="workers", choices=("workers", "device"))
    ap.add_argument("--steps", type=int, default=12)
    a = ap.parse_args(argv)
    overrides = [f"model.encoder.pretrained_path={a.encoder}", "model.encoder.name=bench-feed", *a.overrides]
    r = bench_feed(a.config, overrides, a.device, a.batch, a.size, a.workers, a.augment_on, a.steps)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
