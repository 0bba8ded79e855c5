"""DDP settings for a frozen trunk, measured with two processes: what wrapping the model costs (the
start-up broadcast), and the time of a training step.

    python scripts/bench_ddp.py --encoder DIR [--device cpu|cuda] [--batch 2] [--size 224] [key=value ...]

Each variant wraps its own copy of one model (two processes: gloo on CPU, NCCL on two GPUs); the
timed steps go round the variants, so that the machine's load weighs on all of them alike:

  all_parameters   DDP(model, gradient_as_bucket_view=True): every parameter, the frozen trunk's
                   included, broadcast from rank 0 at start (what train.py did before wrap_ddp)
  trainable_only   engine.distributed.wrap_ddp, as train.py runs it: frozen parameters left out
  static_graph     wrap_ddp(static_graph=True) (train.ddp_static_graph=true)
  no_bucket_view   trainable_only with gradient_as_bucket_view=False (gradients copied into buckets)

Reported per variant: ``wrap_s`` (constructing DDP, broadcast included), ``broadcast_mb`` (what it
broadcasts), ``step_s`` (median train.py step: forward, loss, backward with the all-reduce, AdamW).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ("all_parameters", "trainable_only", "static_graph", "no_bucket_view")


def _wrap(variant: str, model, env):
    """(the DDP model, bytes its construction broadcasts)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from engine.distributed import wrap_ddp

    devices = [env.local_rank] if env.device.type == "cuda" else None
    tensors = dict(model.named_buffers())
    if variant == "all_parameters":
        tensors.update(model.named_parameters())
        net = DDP(model, device_ids=devices, gradient_as_bucket_view=True)
    else:
        tensors.update((n, p) for n, p in model.named_parameters() if p.requires_grad)
        if variant == "no_bucket_view":
            DDP._set_params_and_buffers_to_ignore_for_model(
                model, [n for n, p in model.named_parameters() if not p.requires_grad]
            )
            net = DDP(model, device_ids=devices, gradient_as_bucket_view=False)
        else:
            net = wrap_ddp(model, env, static_graph=variant == "static_graph")
    return net, sum(t.numel() * t.element_size() for t in tensors.values())


def _worker(rank: int, port: int, spec: dict, out: str) -> None:
    import torch
    import torch.distributed as dist

    from build import build_loss, build_model
    from config import load_config
    from engine.amp import select_precision
    from engine.distributed import DistEnv
    from engine.step import optimisation_step, step_arguments

    torch.set_num_threads(spec["threads"])
    cuda = spec["device"] == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        device_id=device if cuda else None,
    )
    env = DistEnv(rank, 2, rank, device, rank == 0)
    cfg = load_config(spec["config"], spec["overrides"])
    precision = select_precision(cfg.train.amp, device)
    torch.manual_seed(rank)  # the ranks start from different decoders: DDP's broadcast makes them equal
    base = build_model(cfg).to(device)
    gen = torch.Generator().manual_seed(rank)
    b, s = spec["batch"], spec["size"]
    x = torch.rand(b, 3, s, s, generator=gen).to(device)
    y = (torch.rand(b, 1, s, s, generator=gen) > 0.5).float().to(device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)
        dist.barrier()

    results, steps = {}, {}
    for variant in spec["variants"]:
        model = copy.deepcopy(base)
        sync()
        t0 = time.perf_counter()
        net, broadcast = _wrap(variant, model, env)
        sync()
        results[variant] = {"wrap_s": time.perf_counter() - t0, "broadcast_mb": broadcast / 2**20, "all_step_s": []}
        net.train()
        step_args = step_arguments(cfg.train, model, build_loss(cfg), precision)
        steps[variant] = functools.partial(optimisation_step, net, [(x, y)], 1, **step_args)
    # Round robin, so that a change in the machine's load touches every variant alike.
    for i in range(spec["warmup"] + spec["repeats"]):
        for variant, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            if i >= spec["warmup"]:
                results[variant]["all_step_s"].append(time.perf_counter() - t0)
    for r in results.values():
        r["step_s"] = statistics.median(r["all_step_s"])
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def bench_ddp(spec: dict) -> dict:
    """``{variant: {"wrap_s", "broadcast_mb", "step_s", "all_step_s"}}`` measured by two processes.

    ``spec``: device, threads (per process), config, overrides, batch, size, warmup, repeats,
    variants (a subset of :data:`VARIANTS`)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        out = str(Path(tmp) / "ddp.json")
        mp.start_processes(_worker, args=(port, spec, out), nprocs=2, start_method="spawn")
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    ap.add_argument("--encoder", required=True, help="a saved DINOv3 folder (scripts/make_tiny_dinov3.py)")
    ap.add_argument("--config", default=str(ROOT / "e2net_dinov3.yaml"))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--batch", type=int, default=2, help="per process")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = {
        "device": a.device,
        "threads": a.threads,
        "config": a.config,
        "overrides": [f"model.encoder.pretrained_path={a.encoder}", f"data.image_size={a.size}", *a.overrides],
        "batch": a.batch,
        "size": a.size,
        "warmup": a.warmup,
        "repeats": a.repeats,
        "variants": a.variants.split(","),
    }
    if "train.amp=" not in " ".join(a.overrides):
        spec["overrides"].append("train.amp=off" if a.device == "cpu" else "train.amp=bf16")
    print(json.dumps(bench_ddp(spec), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
