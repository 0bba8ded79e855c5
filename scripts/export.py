"""Export a trained model: to ONNX (encoder included, checked against PyTorch), or as a folder in
the Hugging Face format to share it.

    python scripts/export.py --ckpt checkpoint/e2net_dinov3/best.pth --onnx model.onnx [--config FILE] [key=value ...]
    python scripts/export.py --ckpt checkpoint/e2net_dinov3/best.pth --hf DIR [--results results.json] [--push-to-hub USER/NAME]

--hf DIR writes config.json (the resolved config; key=value overrides and --config apply),
model.safetensors (the trained parts only: no encoder weights, whose licence is their owner's)
and README.md, a model card with the encoder it needs, how to score it and the results table of
--results (default: a results.json beside the checkpoint). test.py --ckpt DIR and --onnx with
--ckpt DIR read the folder like a checkpoint. --push-to-hub uploads it to a Hub model repository
(created if missing) with huggingface_hub's login (``hf auth login`` or HF_TOKEN).

The exported graph takes ``image``: float32 [B, 3, H, W], RGB in [0, 1] (the model normalises
it with the encoder's mean and std itself), with B, H and W free (H and W multiples of the
encoder's patch size, 16 for the DINOv3 ViTs), and returns ``probability``: float32 [B, 1, H, W],
the final map after the sigmoid. Resize the result to the photo's size as test.py does. The
file holds every weight, the DINOv3 encoder's included: the DINOv3 licence applies to it.

The export goes through ``torch.onnx.export(dynamo=True)``. Afterwards onnxruntime runs the
file on inputs of several batch sizes and image sizes, the largest absolute difference from the
PyTorch model is printed, and the script fails (exit 1) when it exceeds ``--atol``. Options and
config keys: see ``config_schema.py`` and the README's "Config reference".
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from engine.cli import LOG_FORMAT, add_config_arguments, error_line  # noqa: E402

log = logging.getLogger("export")


class ProbabilityMap(nn.Module):
    """``image [B, 3, H, W] in [0, 1] -> probability [B, 1, H, W]``: the final map, after the sigmoid."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        return torch.sigmoid(self.model(image)[-1].float())


def load_for_export(ckpt: Path, config: Path | None, overrides: list[str]) -> tuple[nn.Module, int, int]:
    """Checkpoint -> (float32 model in eval mode on the CPU, its patch size, data.image_size)."""
    from engine.trained import load_trained

    # The ONNX graph is float32 whatever the training precision: no autocast, no bfloat16 weights.
    float32 = [
        *overrides,
        "train.amp=off",
        "model.encoder.weights_dtype=float32",
        "model.encoder2.weights_dtype=float32",
    ]
    trained = load_trained(ckpt, config, float32, device=torch.device("cpu"))
    return trained.model.float(), trained.model.encoder.patch_size, int(trained.cfg.data.image_size)


def export_hf(ckpt: Path, out: Path, config: Path | None, overrides: list[str], results: Path | None) -> None:
    """The checkpoint as a Hugging Face-format folder (:mod:`engine.hub`), its config resolved again
    with ``config`` / ``overrides``; the model card's results from ``results`` or a results.json
    beside the checkpoint."""
    import json

    from config import load_config, to_dict
    from engine.hub import save_hf_folder
    from engine.trained import read_trained

    state = read_trained(ckpt, required=("model",) if config else ("model", "config"))
    state["config"] = to_dict(load_config(config or state["config"], overrides))
    beside = (ckpt if ckpt.is_dir() else ckpt.parent) / "results.json"
    results = results or (beside if beside.is_file() else None)
    save_hf_folder(state, out, json.loads(results.read_text()) if results else None)
    log.info("model card results: %s", results or "none (no results.json beside the checkpoint)")


def export(model: nn.Module, path: Path, patch: int, size: int, opset: int = 18) -> None:
    """Write ``path`` with a free batch size and free image sides (multiples of ``patch``)."""
    wrapper = ProbabilityMap(model).eval()
    # Batch 2 in the example: torch.export specialises a dimension of size 1 to a constant.
    example = torch.rand(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    h, w = torch.export.Dim("h_patches", min=1, max=1024), torch.export.Dim("w_patches", min=1, max=1024)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=["probability"],
            dynamic_shapes={"image": {0: batch, 2: patch * h, 3: patch * w}},
            verbose=False,
        )
    program.model.metadata_props.update(
        {
            "input": "image: float32 [B, 3, H, W], RGB in [0, 1]; H, W multiples of patch_size",
            "output": "probability: float32 [B, 1, H, W], the final map after the sigmoid",
            "patch_size": str(patch),
            "trained_image_size": str(size),
            "licence": "contains the DINOv3 weights: the DINOv3 licence applies",
        }
    )
    program.save(str(path))


def check_parity(model: nn.Module, path: Path, shapes: list[tuple[int, int, int]], seed: int = 0) -> list[float]:
    """Largest |onnxruntime - PyTorch| of the probability map for each (batch, H, W) in ``shapes``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wrapper = ProbabilityMap(model).eval()
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    for b, h, w in shapes:
        x = torch.rand(b, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = wrapper(x).numpy()
        (out,) = session.run(["probability"], {"image": x.numpy()})
        if out.shape != ref.shape:
            raise RuntimeError(f"onnxruntime returned {out.shape} for input {tuple(x.shape)}, PyTorch {ref.shape}")
        diffs.append(float(np.abs(out - ref).max()))
    return diffs


def check_shapes(patch: int, size: int) -> list[tuple[int, int, int]]:
    """Batch sizes 1..3, the trained size, a wide and a tall input: none the export saw."""
    return [
        (1, size, size),
        (3, size + 2 * patch, max(patch, size - 2 * patch)),
        (2, max(patch, size // 2), size + 4 * patch),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt",
        type=Path,
        required=True,
        help="checkpoint written by train.py (best.pth / last.pth), or an --hf folder",
    )
    p.add_argument("--onnx", type=Path, help="ONNX output file, e.g. model.onnx")
    p.add_argument("--hf", type=Path, metavar="DIR", help="Hugging Face-format output folder")
    p.add_argument("--results", type=Path, help="results.json for the --hf model card (default: beside --ckpt)")
    p.add_argument("--push-to-hub", metavar="REPO", help="with --hf: upload the folder to this Hub repository")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--atol", type=float, default=1e-3, help="largest allowed |onnxruntime - PyTorch| (default 1e-3)")
    add_config_arguments(p)
    args = p.parse_args(argv)
    if not args.onnx and not args.hf:
        p.error("give --onnx FILE, --hf DIR or both")
    if args.push_to_hub and not args.hf:
        p.error("--push-to-hub uploads the --hf folder: give --hf DIR too")
    if args.results and not args.results.is_file():
        p.error(f"--results '{args.results}': no such file (a results.json written by test.py)")
    if not args.ckpt.exists():
        p.error(f"--ckpt '{args.ckpt}': no such file (give a checkpoint written by train.py)")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")
    for noisy in ("torch.onnx", "onnxscript", "onnx_ir", "torch._dynamo", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from engine.errors import USER_ERRORS

    try:
        if args.hf:
            export_hf(args.ckpt, args.hf, args.config, args.overrides, args.results)
            print(f"wrote {args.hf}: config.json, model.safetensors (trained parts only), README.md")
            if args.push_to_hub:
                from engine.hub import push_to_hub

                print(f"uploaded to {push_to_hub(args.hf, args.push_to_hub, private=args.private)}")
        if not args.onnx:
            return 0
        model, patch, size = load_for_export(args.ckpt, args.config, args.overrides)
        export(model, args.onnx, patch, size, args.opset)
        shapes = check_shapes(patch, size)
        diffs = check_parity(model, args.onnx, shapes)
    except (*USER_ERRORS, OSError) as err:
        print(f"export.py: error: {error_line(err)}", file=sys.stderr)
        return 1
    mb = sum(f.stat().st_size for f in args.onnx.parent.glob(args.onnx.name + "*")) / 2**20
    print(f"exported {args.onnx} ({mb:.1f} MB, opset {args.opset}): image [B, 3, H, W] -> probability [B, 1, H, W]")
    for (b, h, w), d in zip(shapes, diffs, strict=True):
        print(f"  input {b}x3x{h}x{w}: largest |onnxruntime - PyTorch| = {d:.2e}")
    worst = max(diffs)
    print(f"largest difference: {worst:.2e} (allowed {args.atol:g})")
    if not worst <= args.atol:
        print(
            f"export.py: error: onnxruntime differs from PyTorch by {worst:.2e} > --atol {args.atol:g}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
