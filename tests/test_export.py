"""scripts/export.py: the whole model (encoder included) to ONNX, free batch and image size, checked by
onnxruntime. The export itself (~45 s of tracing) runs once in the suite, as the README writes it:
tests/test_documented_commands.py checks its graph and its parity on sizes it never saw."""

from __future__ import annotations

from pathlib import Path

import torch

from build import build_model
from scripts import export


def test_a_bf16_trained_checkpoint_is_exported_in_float32(tmp_path: Path, tiny_dinov3_factory) -> None:
    from config import load_config, to_dict
    from engine.checkpoint import save_checkpoint

    encoder = tiny_dinov3_factory(layers=4, patch=8)
    cfg = load_config(
        None, [f"model.encoder.pretrained_path={encoder}", "data.image_size=32", "model.channels=16", "train.amp=bf16"]
    )
    torch.manual_seed(0)
    trained = build_model(cfg)
    assert any(p.dtype == torch.bfloat16 for p in trained.parameters())  # frozen weights stored for bf16
    ckpt = tmp_path / "best.pth"
    save_checkpoint(ckpt, {"model": trained.trainable_state_dict(), "config": to_dict(cfg), "epoch": 1, "step": 1})

    model, patch, size = export.load_for_export(ckpt, None, [])
    assert (patch, size) == (8, 32) and all(p.dtype == torch.float32 for p in model.parameters())
    assert not model.training
    x = torch.rand(2, 3, 24, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        probability = export.ProbabilityMap(model)(x)
    assert probability.shape == (2, 1, 24, 56) and probability.min() >= 0.0 and probability.max() <= 1.0
    assert export.check_shapes(8, 32) == [(1, 32, 32), (3, 48, 16), (2, 16, 64)]  # never the traced 2x32x32
