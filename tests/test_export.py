"""scripts/export.py: the whole model (encoder included) to ONNX, free batch and image size, checked by onnxruntime."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from build import build_model
from scripts import export


def test_export_matches_pytorch_on_sizes_it_never_saw(tmp_path: Path, tiny_dinov3_factory, capsys) -> None:
    import onnx
    import onnxruntime as ort

    from config import load_config, to_dict
    from engine.checkpoint import save_checkpoint

    encoder = tiny_dinov3_factory(layers=4, patch=8)
    cfg = load_config(
        None, [f"model.encoder.pretrained_path={encoder}", "data.image_size=32", "model.channels=16", "train.amp=bf16"]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    ckpt = tmp_path / "best.pth"
    save_checkpoint(ckpt, {"model": model.trainable_state_dict(), "config": to_dict(cfg), "epoch": 1, "step": 1})
    onnx_path = tmp_path / "out" / "model.onnx"

    assert export.main(["--ckpt", str(ckpt), "--onnx", str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    worst = float(re.search(r"largest difference: (\S+)", printed).group(1))
    assert worst < 1e-4 and printed.count("input ") == 3

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    (inp,), (out,) = graph.input, graph.output
    assert [d.dim_param != "" for d in inp.type.tensor_type.shape.dim] == [True, False, True, True]
    assert (inp.name, out.name) == ("image", "probability")

    # Independently of the script: a batch of 4 at 24x56 (multiples of the 8-px patch), against the
    # checkpoint loaded afresh, encoder weights in float32 (bf16 AMP would store them in bfloat16).
    reloaded, patch, _ = export.load_for_export(ckpt, None, [])
    assert patch == 8 and all(p.dtype == torch.float32 for p in reloaded.parameters())
    x = torch.rand(4, 3, 24, 56, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = torch.sigmoid(reloaded(x)[-1]).numpy()
    (got,) = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    assert got.shape == (4, 1, 24, 56) and float(np.abs(got - ref).max()) < 1e-4
    assert got.min() >= 0.0 and got.max() <= 1.0
