"""The efficiency table COD papers print, for every shipped config: parameters, GFLOPs, training
memory, inference speed.

    python scripts/efficiency.py                                  # every shipped config, CUDA if present
    python scripts/efficiency.py --device cuda --json efficiency_cuda.json
    python scripts/efficiency.py --train-batch 1 --infer-batches 1 configs/e2net_dual.yaml

Each config (``configs/*.yaml`` and ``e2net_dinov3.yaml``, or those named) is built by
``build.build_model`` as it stands, around random weights of the published architectures its
encoders name, written once into ``--cache``: DINOv3 and DINOv2 ViTs of their published shapes
(``make_tiny_dinov3``), SAM2 Hieras of their published sizes (``make_tiny_sam2``'s presets), timm
models from ``timm.create_model`` without weights. The costs are those of the real models; the
outputs mean nothing. Each config runs in a fresh subprocess so that its peak memory is its own.

  params      all / trainable, in millions
  GFLOPs      forward of one image at data.image_size (FlopCounterMode, multiply-add = 2 FLOPs, as
              scripts/model_info.py counts them)
  train peak  peak memory of a training step (train.py's: forward + loss, backward, clip, AdamW)
              at train.batch_size, after one warm-up step: CUDA ``max_memory_allocated``; CPU the
              peak resident set (VmHWM, reset before the step: weights, optimizer state and the
              runtime included), as scripts/benchmark.py's P6
  images/s    inference (``sigmoid(model(x)[-1])`` under no_grad and the config's resolved
              autocast) at batch 1 and 8 (``--infer-batches``), median of ``--repeats`` after a
              warm-up; on a CPU also per CPU-second of this process (in brackets), which other jobs
              sharing the cores disturb far less than the wall clock

Everything runs at data.image_size (an encoder with its own ``image_size`` resizes to it anyway),
in the config's train.amp resolved for the device (``--amp auto``: what ``auto`` picks there, e.g.
float32 on a CPU whose bf16 matmul is slow).
``--train-batch N`` trains at min(train.batch_size, N) where the config's batch does not fit or
takes too long: the table says the batch it measured at.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHIPPED = [*sorted((ROOT / "configs").glob("*.yaml")), ROOT / "e2net_dinov3.yaml"]
# (width, blocks, heads) of the published ViT sizes, by the size word of a hub id.
VIT_SIZES = {"vits": (384, 12, 6), "small": (384, 12, 6), "vitb": (768, 12, 12), "base": (768, 12, 12)}
VIT_SIZES |= {"vitl": (1024, 24, 16), "large": (1024, 24, 16)}


# --------------------------------------------------------------------------- random weights
def random_weights(cfg, cache: Path) -> list[str]:
    """Overrides pointing each configured encoder at random weights of its published architecture."""
    out = []
    for which in ("encoder", "encoder2"):
        e = cfg.model[which]
        if e.name:
            out.append(
                f"model.{which}.pretrained_path={_random_trunk(str(e.backend), e.name, e.pretrained_path, cache)}"
            )
    return out


def _random_trunk(backend: str, name: str, configured: str | None, cache: Path) -> Path:
    target = cache / re.sub(r"[^\w.-]", "_", f"{backend}-{name}")
    if backend == "timm":
        file = target.with_suffix(".safetensors")
        if not file.exists():
            import timm
            from safetensors.torch import save_file

            model = timm.create_model(name.split(".")[0], pretrained=False, num_classes=0)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, file)
        return file
    if target.exists():
        return target
    if "sam2" in name:
        from scripts.benchmark import _random_sam2

        return Path(_random_sam2(name, target, tiny=False))
    from scripts.make_tiny_dinov3 import make_tiny_dinov3

    size = next((s for s in VIT_SIZES if re.search(rf"\b{s}\b|{s}\d", name.split("/")[-1])), None)
    if size is None:  # the demo's tiny random DINOv3, as the Makefile writes it when it is absent
        if configured and Path(configured).exists():
            return Path(configured)
        if name != "dinov3-tiny-random":
            raise SystemExit(f"efficiency.py: '{name}' is not a published size and {configured} does not exist")
        return make_tiny_dinov3(target, patch=8)
    width, blocks, heads = VIT_SIZES[size]
    dinov2 = "dinov2" in name
    shape = {"hidden": width, "layers": blocks, "heads": heads, "init_std": 0.02}
    shape |= {"family": "dinov2", "patch": 14, "registers": 4 if "registers" in name else 0} if dinov2 else {
        "patch": 16, "registers": 4}  # fmt: skip
    return make_tiny_dinov3(target, **shape)


# --------------------------------------------------------------------------- measuring (child process)
def measure(
    config: str,
    overrides: list[str],
    device_name: str,
    train_batch: int,
    infer_batches: list[int],
    repeats: int,
    threads: int,
) -> dict:
    """One config's row, measured in this process."""
    import torch

    from build import build_loss, build_model
    from config import load_config
    from engine.amp import resolve_precision
    from engine.step import optimisation_step, step_arguments
    from scripts.benchmark import _peak_bytes, _reset_peak, _timed
    from scripts.model_info import measure as model_info

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    cfg = load_config(config, overrides)
    precision = resolve_precision(cfg, device)
    torch.manual_seed(0)
    model = build_model(cfg)
    size = cfg.data.image_size
    row = {"image_size": size, "config_batch": cfg.train.batch_size, "amp": str(cfg.train.amp)}
    row["threads"] = torch.get_num_threads()
    info = model_info(model, (size, size))  # on the CPU, before the move: FLOPs do not depend on the device
    row |= {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": info["trainable_params"],
        "gflops": info["total"] / 1e9,
    }
    model.to(device).eval()
    for batch in infer_batches:
        x = torch.rand(batch, 3, size, size, device=device)

        @torch.no_grad()
        def infer(x=x):
            with precision.autocast():
                torch.sigmoid(model(x)[-1].float())

        timed = _timed(infer, device, 1, repeats)
        row[f"images_per_s_b{batch}"] = batch / timed["s"]
        row[f"images_per_cpu_s_b{batch}"] = batch / timed["cpu_s"]  # on a shared CPU: the work, not the waits
    batch = min(cfg.train.batch_size, train_batch) if train_batch else cfg.train.batch_size
    x = torch.rand(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    model.train()
    args = step_arguments(cfg.train, model, build_loss(cfg), precision)
    optimisation_step(model, [(x, y)], 1, **args)  # warm-up: optimizer state, gradients, allocator
    _reset_peak(device)
    optimisation_step(model, [(x, y)], 1, **args)
    row |= {"train_batch": batch, "train_peak_bytes": _peak_bytes(device)}
    return row


# --------------------------------------------------------------------------- driver
def _speed(row: dict, batch: int, device: str) -> str:
    """Images/s at ``batch`` (on a CPU also per CPU-second, in brackets); a dash where not measured."""
    wall, cpu = row.get(f"images_per_s_b{batch}"), row.get(f"images_per_cpu_s_b{batch}")
    if wall is None:
        return "–"
    return f"{wall:.2f}" + (f" ({cpu:.2f})" if device == "cpu" and cpu else "")


def table(rows: list[dict], device: str) -> str:
    """The markdown table of ``rows``: per config, what it costs on ``device``."""
    lines = [
        f"| config | px | params M | trainable M | GFLOPs | amp | train peak GiB ({device}) | images/s batch 1 | "
        "images/s batch 8 |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        batch = f"batch {r['train_batch']}" + (
            "" if r["train_batch"] == r["config_batch"] else f" of {r['config_batch']}"
        )
        speed = [_speed(r, b, device) for b in (1, 8)]
        lines.append(
            f"| `{r['config']}` | {r['image_size']} | {r['params'] / 1e6:.2f} | {r['trainable_params'] / 1e6:.2f} | "
            f"{r['gflops']:.1f} | {r['amp']} | {r['train_peak_bytes'] / 2**30:.2f} ({batch}) | {speed[0]} | {speed[1]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", help="config files (default: every shipped one)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--train-batch", type=int, default=0, help="train at most at this batch (0: the config's)")
    ap.add_argument("--infer-batches", default="1,8", help="inference batch sizes (comma-separated)")
    ap.add_argument("--repeats", type=int, default=3, help="timed inference passes per batch size")
    ap.add_argument("--amp", default="", help="train.amp for every config (default: each config's own)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--cache", default="", help="folder for the random weights (default: a temporary one)")
    ap.add_argument("--json", default="", help="write the rows here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config in this process
    a = ap.parse_args(argv)
    if a.one:
        spec = json.loads(a.one)
        print(json.dumps(measure(**spec)))
        return 0

    import torch

    from config import load_config

    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="efficiency-") as tmp:
        cache = Path(a.cache or tmp)
        cache.mkdir(parents=True, exist_ok=True)
        for config in [Path(c) for c in a.configs] or SHIPPED:
            name = config.resolve().relative_to(ROOT) if config.resolve().is_relative_to(ROOT) else config
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            overrides = random_weights(load_config(str(config), []), cache) + ([f"train.amp={a.amp}"] if a.amp else [])
            spec = {"config": str(config), "overrides": overrides, "device_name": device}
            batches = [int(b) for b in a.infer_batches.split(",")]
            spec |= {"train_batch": a.train_batch, "infer_batches": batches, "repeats": a.repeats, "threads": a.threads}
            proc = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(spec)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            )
            if proc.returncode != 0:
                print(f"[{name}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr, flush=True)
                continue
            rows.append({"config": str(name), **json.loads(proc.stdout.strip().splitlines()[-1])})
            if a.json:  # after every config: a run stopped by a time limit keeps what it measured
                Path(a.json).write_text(json.dumps({"device": device, "rows": rows}, indent=1))
    print(table(rows, device))
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
