"""Parameters, forward FLOPs and output shapes of the configured model.

    python scripts/model_info.py --config e2net_dinov3.yaml [key=value ...] [--size 384 | --size 320 480]
    python scripts/model_info.py model.encoder.pretrained_path=/tmp/vitb model.decoder=linear
    python scripts/model_info.py --config configs/e2net_dinov2.yaml model.encoder.lora.rank=8

The input size defaults to the config's data.image_size. LoRA adapters (model.encoder.lora.rank > 0)
and block adapters (model.encoder.adapter.blocks) are counted on their own lines, inside the
trainable parameters.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` for one image, which counts matrix
multiplications, convolutions and attention with a multiply-add as 2 FLOPs (GMACs = GFLOPs / 2);
norms, activations and resizing are not counted. Attention runs on the math backend here so that
the CPU kernel, which the counter does not know, is counted as its two matrix products.
"Frozen" FLOPs are those of encoder modules whose weights are all frozen (the ViT trunk; with LoRA,
the frozen layers beside the adapters); every other FLOP (pyramid, fine-tuned blocks, LoRA, block
adapters, CAEM, decoder) is "trainable". Block adapters run inside the frozen trunk's forward (from
hooks on its blocks), so the counter books them there too: their FLOPs are moved back. With two
encoders (model.encoder2) each branch and the fusion get a line of their own: parameters (all and
trainable) and GFLOPs, each branch at its own input size.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from build import build_model  # noqa: E402
from config import ConfigError, load_config  # noqa: E402
from engine.amp import resolve_precision  # noqa: E402
from engine.cli import add_config_arguments  # noqa: E402


def frozen_flops(root: nn.Module, prefix: str, counts: dict[str, int]) -> int:
    """FLOPs of the largest submodules of ``root`` whose parameters are all frozen."""
    params = list(root.parameters())
    if params and not any(p.requires_grad for p in params):
        return counts.get(prefix, 0)
    return sum(frozen_flops(child, f"{prefix}.{name}", counts) for name, child in root.named_children())


def measure(model: nn.Module, size: tuple[int, int]) -> dict[str, object]:
    """Parameter counts, FLOPs per part and output shapes for one [1, 3, *size] image."""
    model.eval()
    x = torch.rand(1, 3, *size)
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        outputs = model(x)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    total = counts["Global"]
    # An adapter's own entry is "<...>.adapters.<block>"; the frozen module it ran inside counted it too.
    adapters = sum(v for k, v in counts.items() if k.rpartition(".")[0].endswith(".adapters"))
    frozen = frozen_flops(model, root, counts) - adapters
    return {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "lora_params": sum(p.numel() for p in model.encoder.lora_parameters()),
        "adapter_params": sum(p.numel() for p in model.encoder.adapter_parameters()),
        "frozen_params": sum(p.numel() for p in model.parameters() if not p.requires_grad),
        "total": total,
        "frozen": frozen,
        "encoder": counts.get(f"{root}.encoder", 0),
        "encoder_trainable": counts.get(f"{root}.encoder", 0) - frozen,
        "caem": counts.get(f"{root}.caem", 0),
        "decoder": counts.get(f"{root}.decoder", 0),
        "trainable": total - frozen,
        "shapes": [tuple(o.shape) for o in outputs],
        "branches": _branches(model, root, counts),
    }


# The parts of a fused encoder (models.fusion.FusedEncoder) and the config section each comes from.
BRANCHES = {"primary": "model.encoder2", "secondary": "model.encoder", "fusion": "model.fusion"}


def _branches(model: nn.Module, root: str, counts: dict[str, int]) -> list[dict[str, object]]:
    """Parameters and FLOPs of each part of a fused encoder; empty for a single encoder."""
    parts = dict(model.encoder.named_children())
    if set(parts) != set(BRANCHES):
        return []
    return [
        {
            "name": BRANCHES[name],
            "params": sum(p.numel() for p in parts[name].parameters()),
            "trainable_params": sum(p.numel() for p in parts[name].parameters() if p.requires_grad),
            "flops": counts.get(f"{root}.encoder.{name}", 0),
        }
        for name in BRANCHES
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="input size: one value (square) or H W; multiples of the patch size (default: data.image_size)",
    )
    add_config_arguments(p)  # without --config: the schema's defaults
    args = p.parse_args(argv)
    if args.size is not None and len(args.size) not in (1, 2):
        p.error("--size takes one value (square) or two (H W)")
    try:
        cfg = load_config(args.config, args.overrides)
        resolve_precision(cfg, torch.device("cpu"))  # the frozen weights' storage follows train.amp
    except ConfigError as err:
        p.error(str(err))
    sizes = args.size or [cfg.data.image_size]
    size = (sizes[0], sizes[-1])
    torch.manual_seed(0)
    try:
        info = measure(build_model(cfg), size)
    except (FileNotFoundError, ValueError, ImportError) as err:  # missing weights, bad size: one line
        sys.exit(f"model_info.py: {err}")
    g = lambda n: f"{n / 1e9:10.3f}"  # noqa: E731
    ratio = info["trainable"] / info["frozen"] if info["frozen"] else float("nan")
    m = cfg.model
    print(
        f"model: decoder={m.decoder} channels={m.channels} simple={m.encoder.simple} "
        f"trainable_blocks={m.encoder.trainable_blocks} lora_rank={m.encoder.lora.rank} "
        f"adapter_blocks={m.encoder.adapter.blocks} pyramid={m.encoder.pyramid} "
        f"encoder={m.encoder.pretrained_path or m.encoder.name}"
        + (f" encoder2={m.encoder2.pretrained_path or m.encoder2.name} fusion={m.fusion}" if m.encoder2.name else "")
    )
    print(f"input: 1x3x{size[0]}x{size[1]}   (GFLOPs: FlopCounterMode, multiply-add = 2 FLOPs)")
    print(f"{'trainable params (M)':38s}{info['trainable_params'] / 1e6:10.2f}")
    print(f"{'  LoRA adapters (M)':38s}{info['lora_params'] / 1e6:10.3f}")
    print(f"{'  block adapters (M)':38s}{info['adapter_params'] / 1e6:10.3f}")
    print(f"{'frozen params (M)':38s}{info['frozen_params'] / 1e6:10.2f}")
    print(f"{'encoder forward GFLOPs':38s}{g(info['encoder'])}")
    print(f"{'frozen encoder forward GFLOPs':38s}{g(info['frozen'])}")
    print(f"{'trainable-part forward GFLOPs':38s}{g(info['trainable'])}")
    print(f"{'  encoder pyramid / fine-tuned / adapters':38s}{g(info['encoder_trainable'])}")
    for b in info["branches"]:
        print(
            f"{'  ' + b['name'] + ' GFLOPs':38s}{g(b['flops'])}   params (M) {b['params'] / 1e6:.2f}, "
            f"trainable {b['trainable_params'] / 1e6:.3f}"
        )
    print(f"{'  CAEM':38s}{g(info['caem'])}")
    print(f"{'  decoder':38s}{g(info['decoder'])}")
    shown = f"{ratio:10.2%}" if info["frozen"] else f"{'n/a':>10s}  (nothing frozen: model.encoder.freeze=false)"
    print(f"{'trainable / frozen encoder':38s}{shown}")
    print(f"{'outputs (final last)':38s}{', '.join('x'.join(map(str, s)) for s in info['shapes'])}")


if __name__ == "__main__":
    main()
