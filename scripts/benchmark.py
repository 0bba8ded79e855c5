"""What a training step and an inference pass cost, as ratios to the hardware and to the frozen encoder.

    python scripts/benchmark.py                      # CUDA if present (batch 8), else CPU (batch 2)
    python scripts/benchmark.py --json bench.json model.channels_last=true train.fused_adamw=false
    python scripts/benchmark.py --tiny --json bench.json  # every phase in seconds: proves the script, measures nothing

Builds the real model with ``build.build_model(config.load_config(--config, overrides))`` around a
ViT-B/16-shaped random DINOv3 written to a temporary folder (no weights needed; ``--encoder DIR``
uses a saved one instead), at ``--size`` px, and measures after warm-up, as medians over
``--repeats`` (CUDA timed with synchronisation). A config with a second encoder (model.encoder2,
e.g. configs/e2net_dual.yaml) gets a random SAM2 trunk of the size its name says (``large`` for
sam2.1-hiera-large; ``--encoder2 DIR`` uses a saved one, e.g. a tiny one from scripts/make_tiny_sam2.py):

  matmul     bf16 and fp32 throughput of a 4096x4096 matmul (the device's reference peak; on a CPU
             the side halves until one product takes at most 2 s: slow bf16 paths run at ~1 GFLOP/s)
  encoder    ``model.encoder(x)`` under no_grad + the config's autocast; FLOP/s from FlopCounterMode
  train      zero_grad, forward + loss under autocast, backward, grad clipping, AdamW step (as train.py)
  infer      ``sigmoid(model(x)[-1])`` under no_grad + autocast (as test.py)
  loader     training transforms, images/s per worker core (scripts/bench_data.py), and the
             data.augment_on=device path's images/s on --device (bench_data.bench_device)
  feed       training steps fed by the real DataLoader (train.num_workers = min(8, cores)), once per
             data.augment_on: share of the wall time spent waiting for data (scripts/bench_feed.py)
  ddp        (only when named in --phases) two processes, DDP settings for the frozen trunk: the
             start-up broadcast and the step time of each variant (scripts/bench_ddp.py)
  train_no_ckpt  (added after train when the config turns model.encoder*.activation_checkpointing on)
             the train phase with activation checkpointing off: P6 without it, and the step time
             it adds (``activation_checkpointing_time_added``: train ÷ train_no_ckpt - 1)

Each phase runs in a fresh subprocess so that its peak memory is its own: CUDA
``max_memory_allocated``, CPU peak RSS (VmHWM), over the timed runs (reset after the warm-up,
whose first call runs under FlopCounterMode, which keeps activations that checkpointing frees). Ratios in the
table and in ``--json`` (ids and goals: the table in docs/performance.md): P1 ``encoder_fraction_of_peak``, P2 ``train_step_over_encoder``, P3
``inference_over_encoder``, P6 ``train_mem_over_inference_mem``, P4 ``loader_images_per_s_per_worker``;
``encoder_fraction_of_best_peak`` is the encoder against the faster of the two matmul peaks. ``train.amp``
is resolved once (``auto``: for this device, engine.amp) and the result passed to every phase.
The load average is recorded with each phase: on a shared CPU, compare runs taken at similar load.
``--batch 8,16,32`` measures the batch-dependent phases at each size (matmul and loader run once).
``--tiny`` runs every phase at toy sizes (a 4-block, 64-wide random encoder, 64 px, a 256² matmul,
eight small JPEGs, one repeat; with model.encoder2, a 6-block tiny SAM2 and both encoders at 64 px),
all in this process: the figures mean nothing, the run proves each phase works.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PHASES = ("matmul", "encoder", "train", "infer", "loader", "feed")
OPTIONAL = ("ddp", "train_no_ckpt")  # run only when --phases names them (train_no_ckpt: see main)
RATIO_PHASES = PHASES[:5]  # the ratios need these; feed adds the data-waiting shares
ONCE = ("matmul", "loader")  # independent of --batch
# --tiny: the model keys that shrink the decoder to the 4-block, 64-wide random encoder it builds
TINY_MODEL = ["model.encoder.layers=[1,2,3,4]", "model.channels=16", "model.context_heads=2"]
TINY_DUAL = ["model.encoder.image_size=0", "model.encoder2.image_size=0"]  # both encoders at --size
NO_CHECKPOINTING = ["model.encoder.activation_checkpointing=false", "model.encoder2.activation_checkpointing=false"]
GOALS = {
    "encoder_fraction_of_peak": (">=", 0.70),
    "train_step_over_encoder": ("<=", 1.6),
    "inference_over_encoder": ("<=", 1.25),
    "train_mem_over_inference_mem": ("<=", 1.5),
    "loader_images_per_s_per_worker": (">=", 150),
}


# --------------------------------------------------------------------------- measuring (child process)
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, warmup: int, repeats: int) -> dict:
    """Median wall and process-CPU seconds of ``fn()`` after ``warmup`` calls; the first warm-up call
    runs under FlopCounterMode (its time is discarded anyway)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    for _ in range(max(0, warmup - 1)):
        fn()
    _reset_peak(device)  # the peak of the timed runs: FlopCounterMode's call keeps what checkpointing frees
    wall, cpu = [], []
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "s": statistics.median(wall),
        "cpu_s": statistics.median(cpu),
        "all_s": wall,
        "flops": counter.get_total_flops(),
    }


def _reset_peak(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # return freed heap to the OS so the high-water mark starts from what is live
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


MATMUL_SECONDS = 2.0  # on a CPU, the longest one timed product may take: the side shrinks to fit


def _matmul(device, spec) -> dict:
    import torch

    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        n = spec["matmul_n"] if device.type == "cuda" else _cpu_matmul_side(spec["matmul_n"], dtype)
        out[f"{name}_n"] = n
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        r = _timed(lambda a=a, b=b: a @ b, device, spec["warmup"], spec["repeats"])
        out[f"{name}_flops_per_s"] = 2 * n**3 / r["s"]
        out[f"{name}_flops_per_cpu_s"] = 2 * n**3 / r["cpu_s"]  # per thread-second
        out[f"{name}_s"] = r["s"]
    return out


def _cpu_matmul_side(largest: int, dtype) -> int:
    """The largest side (``largest`` halved, not below 256) whose product a 256² probe predicts to take
    at most MATMUL_SECONDS: a CPU without a fast bf16 path multiplies bf16 at ~1 GFLOP/s, where one
    4096² product takes two minutes and the peak is already plain at 512²."""
    import torch

    a = torch.randn(256, 256, dtype=dtype)
    a @ a  # the first call pays for the kernel's setup
    t0 = time.perf_counter()
    a @ a
    rate = 2 * 256**3 / max(time.perf_counter() - t0, 1e-9)
    n = largest
    while n > 256 and 2 * n**3 / rate > MATMUL_SECONDS:
        n //= 2
    return n


def run_phase(phase: str, spec: dict) -> dict:
    """One phase in this process -> its numbers (times in s, memory in bytes, FLOPs)."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    if phase == "matmul":
        return _matmul(device, spec)
    if phase == "loader":
        from scripts.bench_data import bench, bench_device

        n, source = spec["source_images"], tuple(spec["source_shape"])
        r = bench(spec["size"], n_images=n, seconds=spec["loader_seconds"], workers=0, source=source)
        d = bench_device(spec["size"], n, spec["loader_seconds"], spec["augment_batch"], spec["device"], source)
        return {
            "images_per_s_per_worker": r["images_per_s_per_worker"],
            "images_per_cpu_s": r["images_per_cpu_s"],
            "device_augment_images_per_s": d["images_per_s"],
            "device_augment_batch": d["batch"],
        }
    if phase == "feed":
        from scripts.bench_feed import bench_feed

        feed = {
            "workers": spec["feed_workers"],
            "steps": spec["feed_steps"],
            "warmup": spec["warmup"],
            "n_images": spec["feed_images"],
            "source": tuple(spec["source_shape"]),
        }
        return {
            on: bench_feed(
                spec["config"], spec["overrides"], spec["device"], spec["batch"], spec["size"], augment_on=on, **feed
            )
            for on in ("workers", "device")
        }

    if phase == "ddp":
        from scripts.bench_ddp import VARIANTS, bench_ddp

        return bench_ddp({**spec, "threads": spec["threads"] or 1, "variants": list(VARIANTS)})

    from build import build_loss, build_model
    from config import load_config
    from engine.amp import select_precision
    from engine.step import optimisation_step, step_arguments

    overrides = spec["overrides"] + (NO_CHECKPOINTING if phase == "train_no_ckpt" else [])
    cfg = load_config(spec["config"], overrides)
    precision = select_precision(cfg.train.amp, device)
    model = build_model(cfg).to(device)
    B, S = spec["batch"], spec["size"]
    x = torch.rand(B, 3, S, S, device=device)
    if phase == "encoder":
        model.eval()

        @torch.no_grad()
        def step():
            with precision.autocast():
                model.encoder(x)
    elif phase == "infer":
        model.eval()

        @torch.no_grad()
        def step():
            with precision.autocast():
                torch.sigmoid(model(x)[-1].float())
    elif phase in ("train", "train_no_ckpt"):
        model.train()
        y = (torch.rand(B, 1, S, S, device=device) > 0.5).float()
        step_args = step_arguments(cfg.train, model, build_loss(cfg), precision)

        def step():  # train.py's own step (engine.step), one micro-batch
            optimisation_step(model, [(x, y)], 1, **step_args)
    else:
        raise ValueError(f"unknown phase '{phase}'; one of {', '.join(PHASES)}")
    r = _timed(step, device, spec["warmup"], spec["repeats"])
    r["peak_bytes"] = _peak_bytes(device)
    r["autocast"] = str(precision.dtype).replace("torch.", "") if precision.dtype else "off"
    return r


# --------------------------------------------------------------------------- driver (parent process)
def _child(phase: str, spec: dict, in_process: bool = False) -> dict:
    load = os.getloadavg()[0]
    if in_process:  # --tiny: a subprocess would spend more time importing torch than measuring
        result = json.loads(json.dumps(run_phase(phase, spec)))
        result["load_avg_1min"] = [load, os.getloadavg()[0]]
        return result
    proc = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--spec", json.dumps(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark phase '{phase}' failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["load_avg_1min"] = [load, os.getloadavg()[0]]  # before and after
    return result


def _ratios(r: dict) -> dict:
    enc, mm = r["encoder"], r["matmul"]
    enc_flops_s = enc["flops"] / enc["s"]
    # P1 compares with the peak of the dtype the encoder computes in (bf16 under train.amp=bf16,
    # fp32 under off); the best-peak fraction asks whether that dtype was the right one for the device.
    peak = mm["fp32_flops_per_s"] if enc["autocast"] == "off" else mm["bf16_flops_per_s"]
    return {
        "encoder_fraction_of_peak": enc_flops_s / peak,
        "encoder_fraction_of_best_peak": enc_flops_s / max(mm["bf16_flops_per_s"], mm["fp32_flops_per_s"]),
        "encoder_fraction_of_bf16_peak": enc_flops_s / mm["bf16_flops_per_s"],
        "encoder_fraction_of_fp32_peak": enc_flops_s / mm["fp32_flops_per_s"],
        "train_step_over_encoder": r["train"]["s"] / enc["s"],
        "inference_over_encoder": r["infer"]["s"] / enc["s"],
        "train_mem_over_inference_mem": r["train"]["peak_bytes"] / r["infer"]["peak_bytes"],
        "loader_images_per_s_per_worker": r["loader"]["images_per_s_per_worker"],
        # The same ratios in process CPU time: less sensitive to other jobs on a shared CPU
        # (with --threads 1, CPU time is the work itself; wall time adds the waits for a core).
        "encoder_fraction_of_peak_cpu": enc["flops"]
        / enc["cpu_s"]
        / (mm["fp32_flops_per_cpu_s"] if enc["autocast"] == "off" else mm["bf16_flops_per_cpu_s"]),
        "train_step_over_encoder_cpu": r["train"]["cpu_s"] / enc["cpu_s"],
        "inference_over_encoder_cpu": r["infer"]["cpu_s"] / enc["cpu_s"],
        **_data_ratios(r),
        **_checkpointing_ratios(r),
    }


def _checkpointing_ratios(r: dict) -> dict:
    """P6 without activation checkpointing and the step time checkpointing adds (train_no_ckpt phase)."""
    if not {"train", "infer", "train_no_ckpt"} <= set(r):
        return {}
    plain = r["train_no_ckpt"]
    return {
        "train_mem_over_inference_mem_no_ckpt": plain["peak_bytes"] / r["infer"]["peak_bytes"],
        "activation_checkpointing_time_added": r["train"]["s"] / plain["s"] - 1,
        "activation_checkpointing_cpu_time_added": r["train"]["cpu_s"] / plain["cpu_s"] - 1,
        "activation_checkpointing_peak_ratio": r["train"]["peak_bytes"] / plain["peak_bytes"],
    }


def _feeds(r: dict) -> list[tuple[str, dict]]:
    """The feed phase's result per data.augment_on path (the phase also holds the load average)."""
    feed = r.get("feed", {})
    return [(on, feed[on]) for on in ("workers", "device") if on in feed]


def _data_ratios(r: dict) -> dict:
    """Whether the data keeps up: the device path's throughput and each path's waiting share."""
    out = {}
    if "device_augment_images_per_s" in r.get("loader", {}):
        out["device_augment_images_per_s"] = r["loader"]["device_augment_images_per_s"]
    for on, f in _feeds(r):
        out[f"data_wait_share_{on}"] = f["wait_share"]
        out[f"fed_images_per_s_{on}"] = f["images_per_s"]
    return out


def _table(out: dict) -> str:
    r, q = out["phases"], out["ratios"]
    g = lambda v: f"{v / 1e9:8.1f} GFLOP/s"  # noqa: E731
    mb = lambda v: f"{v / 2**20:8.0f} MiB"  # noqa: E731
    lines = [
        f"{out['device_name']} ({out['threads']} threads), batch {out['batch']} x {out['size']}px, "
        f"amp={out['amp']} ({out['amp_reason']}), "
        f"median of {out['repeats']}, overrides: {' '.join(out['overrides']) or '-'}",
        f"  matmul   bf16 {g(r['matmul']['bf16_flops_per_s'])} ({r['matmul']['bf16_n']}^2)   "
        f"fp32 {g(r['matmul']['fp32_flops_per_s'])} ({r['matmul']['fp32_n']}^2)",
    ]
    for name in ("encoder", "train", "train_no_ckpt", "infer"):
        if name not in r:
            continue
        p = r[name]
        lines.append(
            f"  {name:8s} {p['s'] * 1e3:9.1f} ms (cpu {p['cpu_s'] * 1e3:8.1f} ms)  "
            f"{p['flops'] / 1e9:8.1f} GFLOP  {g(p['flops'] / p['s'])}  peak {mb(p['peak_bytes'])}  "
            f"load {p['load_avg_1min'][0]:.1f}"
        )
    lines.append(
        f"  loader   {r['loader']['images_per_s_per_worker']:6.1f} images/s per worker "
        f"({r['loader']['images_per_cpu_s']:.1f} per CPU-s)"
    )
    if "device_augment_images_per_s" in q:
        lines.append(
            f"  data.augment_on=device {q['device_augment_images_per_s']:8.1f} images/s on {out['device']} "
            f"(batch {r['loader']['device_augment_batch']})"
        )
    for on, f in _feeds(r):
        lines.append(
            f"  fed by {f['workers']} workers, augment_on={on:7s}: {f['images_per_s']:8.1f} images/s, "
            f"{100 * f['wait_share']:5.1f} % of the time waiting for data"
        )
    for i, key in zip(("P1", "P2", "P3", "P6", "P4"), GOALS):
        op, goal = GOALS[key]
        ok = q[key] >= goal if op == ">=" else q[key] <= goal
        lines.append(f"  {i} {key:32s} {q[key]:8.3f}  goal {op} {goal:<6}  {'ok' if ok else 'MISSED'}")
    lines.append(
        f"     encoder_fraction_of_best_peak    {q['encoder_fraction_of_best_peak']:8.3f}  (of any dtype's matmul)"
    )
    lines += _checkpointing_lines(q)
    lines.append(
        f"     (CPU-time ratios: P1 {q['encoder_fraction_of_peak_cpu']:.3f}, "
        f"P2 {q['train_step_over_encoder_cpu']:.3f}, "
        f"P3 {q['inference_over_encoder_cpu']:.3f})"
    )
    return "\n".join(lines)


def _checkpointing_lines(q: dict) -> list[str]:
    """What activation checkpointing changes, when the train_no_ckpt phase ran."""
    if "train_mem_over_inference_mem_no_ckpt" not in q:
        return []
    return [
        f"     P6 without activation checkpointing {q['train_mem_over_inference_mem_no_ckpt']:8.3f}; "
        f"with it the training peak is {q['activation_checkpointing_peak_ratio']:.3f}x and the step "
        f"{100 * q['activation_checkpointing_time_added']:+.1f} % wall "
        f"({100 * q['activation_checkpointing_cpu_time_added']:+.1f} % CPU)"
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "overrides",
        nargs="*",
        help="config overrides key=value, e.g. model.channels_last=true (every key: config_schema.py, README 'Config reference')",
    )
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--batch", default="0", help="0: 8 on CUDA, 2 on CPU; a list (8,16,32) runs each")
    ap.add_argument("--size", type=int, default=0, help="image side in px (0: 384; 64 with --tiny)")
    ap.add_argument("--repeats", type=int, default=0, help="timed runs per phase after warm-up (0: 20 CUDA, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed runs first (0: 5 CUDA, 1 CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--config", default=str(ROOT / "e2net_dinov3.yaml"), help="recipe to build the model from")
    ap.add_argument("--encoder", default="", help="a saved DINOv3 folder instead of a random ViT-B/16")
    ap.add_argument("--encoder2", default="", help="with model.encoder2: a saved SAM2 folder instead of a random one")
    ap.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset (ratios need {','.join(RATIO_PHASES)}; also: {','.join(OPTIONAL)})",
    )
    ap.add_argument("--quick", action="store_true", help="2048^2 matmul, shorter loader run, 2 repeats")
    ap.add_argument(
        "--tiny", action="store_true", help="every phase at toy sizes in seconds: proves the script, measures nothing"
    )
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.phase:
        print(json.dumps(run_phase(a.phase, json.loads(a.spec))))
        return 0

    import torch

    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch (check nvidia-smi / CUDA_VISIBLE_DEVICES)")
    cuda = device == "cuda"
    a.size = a.size or (64 if a.tiny else 384)
    phases = [p.strip() for p in a.phases.split(",") if p.strip()]
    bad = [p for p in phases if p not in PHASES + OPTIONAL]
    if bad:
        raise SystemExit(f"--phases: unknown {bad}; choose from {', '.join(PHASES + OPTIONAL)}")
    # train.amp resolved once here, as train.py would on this device; every phase gets the result.
    from config import ConfigError, load_config
    from engine.amp import resolve_precision

    if a.threads:
        torch.set_num_threads(a.threads)  # the probe of train.amp=auto runs with the phases' threads
    try:
        cfg = load_config(a.config, a.overrides)
        precision = resolve_precision(cfg, torch.device(device))
    except ConfigError as err:
        raise SystemExit(f"benchmark.py: {err}") from None
    checkpointing = cfg.model.encoder.activation_checkpointing or cfg.model.encoder2.activation_checkpointing
    if checkpointing and "train" in phases and "train_no_ckpt" not in phases:  # P6 with and without it
        phases.insert(phases.index("train") + 1, "train_no_ckpt")
    with tempfile.TemporaryDirectory(prefix="bench-dinov3-") as tmp:
        encoder = a.encoder
        if not encoder and set(phases) & {"encoder", "train", "infer", "feed", "ddp"}:
            from scripts.make_tiny_dinov3 import make_tiny_dinov3

            # ViT-B/16 shape (MLP 3072, 4 registers); small init keeps random activations ordinary.
            shape = {"hidden": 64, "layers": 4, "heads": 2} if a.tiny else {"hidden": 768, "layers": 12, "heads": 12}
            encoder = str(
                make_tiny_dinov3(Path(tmp) / "vitb16", registers=4, patch=16, mlp_ratio=4.0, init_std=0.02, **shape)
            )
        encoder2 = []
        if cfg.model.encoder2.name:
            folder = a.encoder2 or _random_sam2(cfg.model.encoder2.name, Path(tmp) / "sam2", a.tiny)
            encoder2 = ["model.encoder2.backend=hf", f"model.encoder2.pretrained_path={folder}"]
            encoder2 += ["model.encoder2.name=benchmark-sam2", *(TINY_DUAL if a.tiny else [])]
        try:
            batches = [int(b) or (8 if cuda else 2) for b in a.batch.split(",")]
        except ValueError:
            raise SystemExit(f"--batch {a.batch}: give a batch size or a comma-separated list (8,16,32)") from None
        runs, once = [], {}
        for batch in batches:
            spec = {
                "device": device,
                "threads": a.threads,
                "size": a.size,
                "config": a.config,
                "batch": batch,
                "repeats": a.repeats or (1 if a.tiny else 2 if a.quick else 20 if cuda else 3),
                "warmup": a.warmup or (1 if a.tiny or not cuda else 5),
                "matmul_n": 256 if a.tiny else 2048 if a.quick else 4096,
                "loader_seconds": 0.3 if a.tiny else 3.0 if a.quick else 8.0,
                "source_images": 8 if a.tiny else 32,
                "source_shape": [96, 128] if a.tiny else [600, 800],
                "augment_batch": 4 if a.tiny else 32 if cuda else 8,
                "feed_workers": min(8, os.cpu_count() or 1),
                "feed_images": 8 if a.tiny else 0,
                "feed_steps": 1 if a.tiny else 12 if cuda else 2,
                "overrides": [
                    f"model.encoder.pretrained_path={encoder}",
                    "model.encoder.name=benchmark-vitb16",
                    f"data.image_size={a.size}",
                    *(TINY_MODEL if a.tiny else []),
                    *encoder2,
                    *a.overrides,
                    f"train.amp={precision.amp}",
                ],
            }
            results = {}
            for phase in phases:
                if phase in once:  # measured at the first batch size
                    results[phase] = once[phase]
                    continue
                print(f"[{phase}, batch {batch}] ...", file=sys.stderr, flush=True)
                results[phase] = _child(phase, spec, in_process=a.tiny)
                if phase in ONCE:
                    once[phase] = results[phase]
            runs.append(_report(a, spec, torch, precision, results))
            if a.json:  # after every batch size: a run stopped by a time limit keeps what it measured
                _write(a.json, runs)
    return 0


def _random_sam2(name: str, folder: Path, tiny: bool) -> str:
    """A random SAM2 trunk of the size in ``name`` (tiny, small, base_plus / base-plus, large; else
    large); ``tiny``: make_tiny_sam2's 6-block default instead."""
    from scripts.make_tiny_sam2 import PRESETS, make_tiny_sam2

    if tiny:
        return str(make_tiny_sam2(folder, trunk_only=True))
    size = next((s for s in PRESETS if s in name.replace("-", "_")), "large")
    print(f"[random SAM2 Hiera {size} for model.encoder2] ...", file=sys.stderr, flush=True)
    return str(make_tiny_sam2(folder, **PRESETS[size], init_std=0.02, trunk_only=True))


def _write(path: str, runs: list[dict]) -> None:
    out = runs[0] if len(runs) == 1 else {"runs": runs, **{k: runs[0][k] for k in ("device", "device_name", "torch")}}
    Path(path).write_text(json.dumps(out, indent=1))


def _report(a, spec: dict, torch, precision, results: dict) -> dict:
    """One batch size's results, ratios and printed table."""
    cuda = spec["device"] == "cuda"
    out = {
        "device": spec["device"],
        "device_name": torch.cuda.get_device_name() if cuda else (_cpu_name() or "CPU"),
        "threads": a.threads or torch.get_num_threads(),
        "batch": spec["batch"],
        "size": a.size,
        "repeats": spec["repeats"],
        "matmul_n": spec["matmul_n"],
        "overrides": a.overrides,
        "amp": str(precision.amp),
        "amp_reason": precision.reason,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "phases": results,
    }
    if set(RATIO_PHASES) <= set(results):
        out["ratios"] = _ratios(results)
        out.update(out["ratios"])
        print(_table(out), flush=True)
    else:
        print(json.dumps(results, indent=1), flush=True)
        checkpointing = _checkpointing_ratios(results)  # P6 with and without needs no other phase
        if checkpointing:
            out.update(checkpointing)
            print("\n".join(_checkpointing_lines(checkpointing)), flush=True)
    return out


def _cpu_name() -> str:
    m = (
        re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if Path("/proc/cpuinfo").exists()
        else None
    )
    return m.group(1).strip() if m else ""


if __name__ == "__main__":
    sys.exit(main())
