"""Write a tiny random DINOv3 or DINOv2 ViT that ``AutoModel.from_pretrained(OUT)`` loads with no network.

Tests, the demo and benchmarks use it in place of the gated Meta weights:

    python scripts/make_tiny_dinov3.py checkpoint/tiny-dinov3 --hidden 64 --layers 12 --registers 4
    python scripts/make_tiny_dinov3.py checkpoint/tiny-dinov2 --family dinov2 --patch 14 --registers 4

The folder holds ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``, the same
three files a real ``facebook/dinov3-*`` / ``facebook/dinov2-*`` snapshot has. ``--family dinov2``
writes a ``Dinov2Model`` (no registers) or, with ``--registers`` > 0, a ``Dinov2WithRegistersModel``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

# ImageNet statistics, what the LVD-1689M and LVD-142M checkpoints ship in their preprocessor_config.json.
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

FAMILIES = ("dinov3", "dinov2")


def make_tiny_dinov3(
    out_dir: str | Path,
    *,
    hidden: int = 64,
    layers: int = 12,
    heads: int = 2,
    registers: int = 4,
    patch: int = 16,
    mlp_ratio: float = 4.0,
    gated_mlp: bool = False,
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int = 0,
    layerscale: float = 1.0,
    init_std: float = 0.1,
    family: str = "dinov3",
) -> Path:
    """Save a randomly initialised ``DINOv3ViTModel`` (``family="dinov2"``: ``Dinov2Model``, or
    ``Dinov2WithRegistersModel`` when ``registers`` > 0) and its image processor to ``out_dir``.

    DINOv3: ``hidden`` must be divisible by ``4 * heads`` (RoPE splits each head into y/x halves of sin/cos).
    ``layerscale`` (1.0, not DINOv3's 1e-5) and ``init_std`` (0.1, not 0.02) are large so that each
    random block changes the tokens and attention is peaked enough for RoPE to matter: tests of layer
    indexing and of position handling stay able to fail.
    Returns the folder path.
    """
    import torch

    if family not in FAMILIES:
        raise ValueError(f"family '{family}' is not one of {', '.join(FAMILIES)}")
    if family == "dinov2":
        return _make_tiny_dinov2(
            out_dir,
            hidden,
            layers,
            heads,
            registers,
            patch,
            mlp_ratio,
            image_size,
            mean,
            std,
            seed,
            layerscale,
            init_std,
        )
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    if hidden % (4 * heads) != 0:
        raise ValueError(f"--hidden {hidden} must be divisible by 4 * --heads ({4 * heads}) for DINOv3's 2-D RoPE")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = DINOv3ViTConfig(
        hidden_size=hidden,
        intermediate_size=int(hidden * mlp_ratio),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_register_tokens=registers,
        patch_size=patch,
        image_size=image_size,
        use_gated_mlp=gated_mlp,
        hidden_act="silu" if gated_mlp else "gelu",
        layerscale_value=layerscale,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = DINOv3ViTModel(config).eval()
    model.save_pretrained(out)
    processor = DINOv3ViTImageProcessor(
        image_mean=list(mean), image_std=list(std), size={"height": image_size, "width": image_size}
    )
    processor.save_pretrained(out)
    return out


def _make_tiny_dinov2(
    out_dir, hidden, layers, heads, registers, patch, mlp_ratio, image_size, mean, std, seed, layerscale, init_std
) -> Path:
    import torch
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common = {
        "hidden_size": hidden,
        "mlp_ratio": int(mlp_ratio) if float(mlp_ratio).is_integer() else mlp_ratio,  # the config wants an int
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "patch_size": patch,
        "image_size": image_size,
        "layerscale_value": layerscale,
        "initializer_range": init_std,
    }
    torch.manual_seed(seed)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    model.eval().save_pretrained(out)
    # What facebook/dinov2-* ship: a BitImageProcessor with the model's mean and std.
    BitImageProcessor(image_mean=list(mean), image_std=list(std)).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write (created if missing)")
    p.add_argument("--family", choices=FAMILIES, default="dinov3", help="dinov3 (RoPE) or dinov2 (learned positions)")
    p.add_argument("--hidden", type=int, default=64, help="embedding width (DINOv3: divisible by 4 * heads)")
    p.add_argument("--layers", type=int, default=12, help="number of transformer blocks")
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--registers", type=int, default=4, help="register tokens (0 for none)")
    p.add_argument("--patch", type=int, default=16, help="16 for DINOv3, 14 for DINOv2")
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--gated-mlp", action="store_true", help="SwiGLU MLP as in ViT-S+/H+/7B")
    p.add_argument("--image-size", type=int, default=224, help="nominal size recorded in the config")
    p.add_argument("--mean", type=float, nargs=3, default=IMAGENET_MEAN)
    p.add_argument("--std", type=float, nargs=3, default=IMAGENET_STD)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = make_tiny_dinov3(
        a.out,
        hidden=a.hidden,
        layers=a.layers,
        heads=a.heads,
        registers=a.registers,
        patch=a.patch,
        mlp_ratio=a.mlp_ratio,
        gated_mlp=a.gated_mlp,
        image_size=a.image_size,
        mean=a.mean,
        std=a.std,
        seed=a.seed,
        family=a.family,
    )
    print(f"wrote a random {a.family} ViT to {out}")


if __name__ == "__main__":
    main()
