"""Images per second per worker core for the training transforms, on real-sized JPEGs.

    python scripts/bench_data.py [--size 384] [--images 64] [--seconds 8] [--workers 0] [--cache]

Generates ``--images`` 800x600 JPEGs (quality 95, ~190 KB, camouflage textures from
make_synthetic_cod.py) in a temporary folder, builds the training dataset through
``datasets.build_train_val`` and times ``dataset[(index, size, epoch)]`` (decode + flip/scale-crop/
rotation warp + colour jitter + tensor conversion) in this process with one thread: that is
one worker core. ``--workers K`` also times a K-worker DataLoader (total / K). Goal: >= 150/s.
``--device cpu|cuda`` also times ``data.augment_on=device``: batches of ``--batch`` uint8 images
from memory, warped and jittered on that device (:func:`bench_device`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import torch  # noqa: E402

from config import load_config  # noqa: E402
from scripts.make_synthetic_cod import make_image  # noqa: E402


def write_jpegs(root: Path, n: int, height: int = 600, width: int = 800, quality: int = 95) -> None:
    """``root/TrainDataset/{Imgs,GT}`` with ``n`` height x width JPEG/PNG pairs."""
    for sub in ("Imgs", "GT"):
        (root / "TrainDataset" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = make_image(7, 0, i, max(height, width), 0.5, shape=(height, width))
        cv2.imwrite(
            str(root / "TrainDataset" / "Imgs" / f"bench_{i:04d}.jpg"),
            cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, quality],
        )
        cv2.imwrite(str(root / "TrainDataset" / "GT" / f"bench_{i:04d}.png"), mask, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def bench(
    size: int = 384,
    n_images: int = 64,
    seconds: float = 8.0,
    workers: int = 0,
    cache: bool = False,
    source: tuple[int, int] = (600, 800),
) -> dict:
    """``{"images_per_s_per_worker": float, "images_per_cpu_s": float,
    "loader_images_per_s_per_worker": float | None, ...}``.

    ``images_per_s_per_worker`` is wall-clock in one thread; ``images_per_cpu_s`` divides by the CPU
    time this process got, the fairer figure when other jobs share the cores. ``source``: (H, W) of
    the generated JPEGs.
    """
    import datasets

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpegs(root, n_images, *source)
        cfg = load_config(
            None,
            [
                f"data.root={root}",
                f"data.image_size={size}",
                "data.val_fraction=0",
                f"data.cache={str(cache).lower()}",
                f"train.num_workers={workers}",
                "train.batch_size=8",
            ],
        )
        t0 = time.perf_counter()
        train, _ = datasets.build_train_val(cfg)
        build_s = time.perf_counter() - t0
        for i in range(min(8, len(train))):  # warm-up: page cache, OpenCV init
            train[(i, size, 0)]
        done, epoch, t0, c0 = 0, 1, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            for i in range(len(train)):
                train[(i, size, epoch)]
            done, epoch = done + len(train), epoch + 1
        per_worker = done / (time.perf_counter() - t0)
        per_cpu_s = done / (time.process_time() - c0)
        loader_rate = None
        if workers > 0:
            loader = datasets.build_loader(train, cfg, train=True)
            datasets.set_epoch(loader, 0)
            for _ in loader:  # starts the workers
                pass
            done, epoch, t0 = 0, 1, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                datasets.set_epoch(loader, epoch)
                done += sum(len(b["name"]) for b in loader)
                epoch += 1
            loader_rate = done / (time.perf_counter() - t0) / workers
    return {
        "images_per_s_per_worker": per_worker,
        "images_per_cpu_s": per_cpu_s,
        "loader_images_per_s_per_worker": loader_rate,
        "build_s": build_s,
        "size": size,
        "source": f"{source[1]}x{source[0]} JPEG q95",
        "cache": cache,
        "cpu_count": os.cpu_count(),
    }


def bench_device(
    size: int = 384,
    n_images: int = 64,
    seconds: float = 8.0,
    batch: int = 32,
    device: str = "cpu",
    source: tuple[int, int] = (600, 800),
) -> dict:
    """``data.augment_on=device`` throughput: ``{"images_per_s": float, "decode_s": float, ...}``.

    Times what a training step adds on this path: collating ``batch`` items of the decoded set
    (uint8 copies and the parameter draws) and :func:`datasets.training_inputs` on ``device``
    (transfer, warp, jitter), synchronised. ``decode_s`` is the one-off start-up decode.
    """
    import datasets

    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_jpegs(root, n_images, *source)
        cfg = load_config(
            None,
            [f"data.root={root}", f"data.image_size={size}", "data.val_fraction=0", "data.augment_on=device"],
        )
        t0 = time.perf_counter()
        train, _ = datasets.build_train_val(cfg)
        decode_s = time.perf_counter() - t0

    def one(epoch: int, b: int) -> None:
        keys = [((b * batch + j) % len(train), size, epoch) for j in range(batch)]
        x, _ = datasets.training_inputs(datasets.collate([train[k] for k in keys]), dev)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for b in range(3):  # warm-up: kernels, allocator
        one(0, b)
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        one(1 + done // batch, done // batch)
        done += batch
    return {
        "images_per_s": done / (time.perf_counter() - t0),
        "images_per_cpu_s": done / (time.process_time() - c0),  # all threads' CPU time
        "decode_s": decode_s,
        "batch": batch,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "size": size,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=0, help="also time a DataLoader with this many workers")
    ap.add_argument("--cache", action="store_true", help="with data.cache=true (pre-resized copies)")
    ap.add_argument("--device", default="", help="also time data.augment_on=device on this device (cpu, cuda)")
    ap.add_argument("--batch", type=int, default=32, help="batch size of the --device timing")
    args = ap.parse_args(argv)
    r = bench(args.size, args.images, args.seconds, args.workers, args.cache)
    print(
        f"training transforms at {r['size']} on {r['source']}{' (cached)' if r['cache'] else ''}: "
        f"{r['images_per_s_per_worker']:.0f} images/s per worker core, wall clock "
        f"({r['images_per_cpu_s']:.0f} per CPU-second; goal >= 150); dataset build {r['build_s']:.2f} s"
    )
    if r["loader_images_per_s_per_worker"] is not None:
        print(f"DataLoader with {args.workers} workers: {r['loader_images_per_s_per_worker']:.0f} images/s per worker")
    if args.device:
        d = bench_device(args.size, args.images, args.seconds, args.batch, args.device)
        print(
            f"data.augment_on=device on {d['device']} ({d['torch_threads']} threads), batch {d['batch']}: "
            f"{d['images_per_s']:.0f} images/s ({d['images_per_cpu_s']:.0f} per CPU-second; decoding {args.images} images once took {d['decode_s']:.2f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
