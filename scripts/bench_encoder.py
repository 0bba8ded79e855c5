"""Forward time of the DINOv3 encoder on a random ViT-B/16-shaped trunk (no weights needed).

    python scripts/bench_encoder.py --size 384 --batch 1 --runs 5

Prints the median wall time of ``encoder(x)`` (trunk + pyramid, frozen, no_grad) in float32, in
bf16 autocast, and in bf16 autocast with bf16-stored trunk weights (``weights_dtype=torch.bfloat16``),
and the median CPU time of this process per run (less sensitive to other processes sharing the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from dinov3_encoder import PyramidEncoder
from encoders.trunks import HFViT


def build(
    hidden: int, layers: int, heads: int, registers: int, weights_dtype: torch.dtype, device: str
) -> PyramidEncoder:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = DINOv3ViTConfig(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_register_tokens=registers,
        patch_size=16,
    )
    torch.manual_seed(0)
    trunk = HFViT(DINOv3ViTModel(cfg))
    enc = PyramidEncoder(trunk, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, weights_dtype=weights_dtype)
    return enc.to(device).eval()


def time_forward(enc: PyramidEncoder, x: torch.Tensor, amp: bool, runs: int, warmup: int):
    """-> (wall seconds, process CPU seconds) per run."""
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else nullcontext()
    times, cpu = [], []
    with torch.no_grad(), ctx:
        for i in range(warmup + runs):
            if x.is_cuda:
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            enc(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return times, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--registers", type=int, default=4)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    x = torch.rand(a.batch, 3, a.size, a.size, device=a.device)
    print(
        f"ViT hidden {a.hidden}, {a.layers} blocks, {a.heads} heads, {a.registers} registers, patch 16; "
        f"input {a.batch}x3x{a.size}x{a.size} on {a.device} ({torch.get_num_threads()} threads), "
        f"median of {a.runs} after {a.warmup} warm-up"
    )
    for name, weights_dtype, amp in (
        ("float32", torch.float32, False),
        ("bf16 autocast", torch.float32, True),
        ("bf16 autocast + bf16 weights", torch.bfloat16, True),
    ):
        enc = build(a.hidden, a.layers, a.heads, a.registers, weights_dtype, a.device)
        wall, cpu = time_forward(enc, x, amp, a.runs, a.warmup)
        ms = [v * 1000 for v in wall]
        print(
            f"{name:30s} wall median {statistics.median(ms):8.1f} ms (min {min(ms):.1f}, max {max(ms):.1f}); "
            f"CPU time median {statistics.median(cpu) * 1000:8.1f} ms"
        )


if __name__ == "__main__":
    main()
