"""Write a tiny random SAM2 that ``from_pretrained(OUT)`` loads with no network.

Tests, the demo and benchmarks use it in place of ``facebook/sam2.1-hiera-*``:

    python scripts/make_tiny_sam2.py checkpoint/sam2-tiny-random
    python scripts/make_tiny_sam2.py checkpoint/hiera-tiny-random --trunk-only

By default the folder holds what a real ``facebook/sam2.1-hiera-*`` snapshot holds: ``config.json``
and ``model.safetensors`` of a whole ``Sam2Model`` (Hiera trunk, FPN neck, prompt encoder, mask
decoder; the trunk's weights under ``vision_encoder.backbone.``) and a ``preprocessor_config.json``
with ImageNet mean/std. ``--trunk-only`` writes the bare ``Sam2HieraDetModel`` instead.

Each stage doubles the width and the heads of the previous one, as in every SAM2 size.
``--preset large`` (or tiny, small, base_plus) writes a random model of that SAM2 size instead, for
benchmarks: ``python scripts/make_tiny_sam2.py /tmp/hiera-l --preset large --trunk-only``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # what SAM2's image processor uses

# The four SAM2 trunks (as Meta's sam2.1_hiera_*.yaml and timm's sam2_hiera_* define them):
# first-stage width and heads, blocks per stage, windows per stage, global-attention blocks, background.
PRESETS = {
    name: {"hidden": h, "heads": n, "stages": b, "windows": w, "global_blocks": g, "background": bg}
    for name, h, n, b, w, g, bg in [
        ("tiny", 96, 1, (1, 2, 7, 2), (8, 4, 14, 7), (5, 7, 9), 7),
        ("small", 96, 1, (1, 2, 11, 2), (8, 4, 14, 7), (7, 10, 13), 7),
        ("base_plus", 112, 2, (2, 3, 16, 3), (8, 4, 14, 7), (12, 16, 20), 14),
        ("large", 144, 2, (2, 6, 36, 4), (8, 4, 16, 8), (23, 33, 43), 7),
    ]
}


def hiera_config(
    hidden: int = 16,
    heads: int = 1,
    stages: Sequence[int] = (1, 2, 2, 1),
    windows: Sequence[int] = (8, 4, 4, 2),
    global_blocks: Sequence[int] = (4,),
    background: int = 4,
    init_std: float = 0.1,
):
    """A ``Sam2HieraDetConfig`` of four stages: width ``hidden * 2**s`` and ``heads * 2**s`` heads in stage s.

    ``global_blocks`` (from 0) attend globally, the others inside windows of ``windows[stage]``;
    ``background`` is the side of the interpolated background position embedding.
    """
    from transformers import Sam2HieraDetConfig

    if len(stages) != 4 or len(windows) != 4:
        raise ValueError(f"give four stages and four window sizes, got {list(stages)} and {list(windows)}")
    return Sam2HieraDetConfig(
        hidden_size=hidden,
        num_attention_heads=heads,
        blocks_per_stage=list(stages),
        embed_dim_per_stage=[hidden * 2**s for s in range(4)],
        num_attention_heads_per_stage=[heads * 2**s for s in range(4)],
        window_size_per_stage=list(windows),
        global_attention_blocks=list(global_blocks),
        window_positional_embedding_background_size=[background, background],
        initializer_range=init_std,
    )


def make_tiny_sam2(
    out_dir: str | Path,
    hidden: int = 16,
    heads: int = 1,
    stages: Sequence[int] = (1, 2, 2, 1),
    windows: Sequence[int] = (8, 4, 4, 2),
    global_blocks: Sequence[int] = (4,),
    background: int = 4,
    trunk_only: bool = False,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    seed: int = 0,
    init_std: float = 0.1,
) -> Path:
    """Save a randomly initialised ``Sam2Model`` (``trunk_only``: ``Sam2HieraDetModel``) and its image
    processor to ``out_dir``; returns the folder.

    The position embeddings are random (transformers initialises them to zero) so that tests of
    position handling at other input sizes can fail; ``init_std`` (0.1, large) keeps every random
    block visible in the output. Real sizes: ``**PRESETS[name]`` with ``init_std=0.02``.
    """
    import torch
    from transformers import Sam2Config, Sam2HieraDetModel, Sam2ImageProcessor, Sam2Model, Sam2VisionConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = hiera_config(hidden, heads, stages, windows, global_blocks, background, init_std)
    torch.manual_seed(seed)
    if trunk_only:
        model = Sam2HieraDetModel(backbone)
        trunk = model
    else:
        fpn = 2 * hidden
        widths = backbone.embed_dim_per_stage
        vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=widths[::-1], fpn_hidden_size=fpn)
        decoder = {"hidden_size": fpn, "mlp_dim": 2 * fpn, "num_attention_heads": 2, "iou_head_hidden_dim": fpn}
        config = Sam2Config(
            vision_config=vision, prompt_encoder_config={"hidden_size": fpn}, mask_decoder_config=decoder
        )
        model = Sam2Model(config)
        trunk = model.vision_encoder.backbone
    with torch.no_grad():
        trunk.pos_embed.normal_(std=5 * init_std)
        trunk.pos_embed_window.normal_(std=5 * init_std)
    model.eval().save_pretrained(out)
    Sam2ImageProcessor(image_mean=list(mean), image_std=list(std)).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="folder to write (created if missing)")
    p.add_argument("--hidden", type=int, default=16, help="width of the first stage (doubles per stage)")
    p.add_argument("--heads", type=int, default=1, help="heads of the first stage (doubles per stage)")
    p.add_argument("--stages", type=int, nargs=4, default=(1, 2, 2, 1), help="blocks per stage")
    p.add_argument("--windows", type=int, nargs=4, default=(8, 4, 4, 2), help="attention window per stage")
    p.add_argument("--global-blocks", type=int, nargs="*", default=(4,), help="blocks (from 0) with global attention")
    p.add_argument("--background", type=int, default=4, help="side of the background position embedding")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a real SAM2 size (overrides the shape options)")
    p.add_argument("--trunk-only", action="store_true", help="write a bare Sam2HieraDetModel, not a whole Sam2Model")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    shape = {
        "hidden": a.hidden,
        "heads": a.heads,
        "stages": a.stages,
        "windows": a.windows,
        "global_blocks": a.global_blocks,
        "background": a.background,
    }
    if a.preset:
        shape = {**PRESETS[a.preset], "init_std": 0.02}
    out = make_tiny_sam2(a.out, **shape, trunk_only=a.trunk_only, seed=a.seed)
    print(f"wrote a random {'Sam2HieraDetModel' if a.trunk_only else 'Sam2Model'} to {out}")


if __name__ == "__main__":
    main()
