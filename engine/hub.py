"""A trained model as a Hugging Face-format folder: what to share (on the Hub or otherwise), and
what test.py and the ONNX export read back like a checkpoint.

    DIR/config.json        the resolved training config, as a checkpoint stores it
    DIR/model.safetensors  the trained weights only (decoder, heads, LoRA, adapters, fine-tuned blocks); the
                           frozen encoder is not in it (its weights are its owner's to share):
                           config.json names it, the model card says where to get it
    DIR/README.md          the model card: the encoder it needs, how to score it, the results

The rest of what scoring reads from a checkpoint (the encoder's fingerprint, epoch, step, the best
validation metric) travels in the safetensors header as JSON strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from config import first_line
from engine.checkpoint import CheckpointError
from engine.checkpoint.training import BEST_KEYS
from evaluation.tables import format_markdown

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
# Checkpoint entries the folder keeps besides the weights and the config (in the header): best.pth's.
META_KEYS = tuple(k for k in BEST_KEYS if k not in ("model", "config"))


def is_hf_folder(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file()


def save_hf_folder(ckpt: Mapping[str, Any], out: Path, results: Mapping[str, dict] | None = None) -> None:
    """Write checkpoint ``ckpt`` (train.py's: ``model``, ``config`` and :data:`META_KEYS`) as the
    folder ``out``; ``results`` (a results.json of test.py) goes into the model card."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in ckpt["model"].items()}
    metadata = {"format": "pt", **{k: json.dumps(ckpt.get(k)) for k in META_KEYS}}
    save_file(weights, out / WEIGHTS_NAME, metadata=metadata)
    (out / CONFIG_NAME).write_text(json.dumps(ckpt["config"], indent=2) + "\n")
    model_card(ckpt, results, out.name).save(out / CARD_NAME)


def load_hf_folder(path: Path) -> dict[str, Any]:
    """The folder as a checkpoint: ``{"model": tensors, "config": dict, **META_KEYS}``."""
    path = Path(path)
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
        weights = load_file(path / WEIGHTS_NAME)
        with safe_open(path / WEIGHTS_NAME, framework="pt") as f:
            header = f.metadata() or {}
        meta = {k: json.loads(header[k]) for k in META_KEYS if k in header}
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"model folder '{path}' cannot be read ({first_line(err, with_type=True)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"model folder '{path}': {CONFIG_NAME} holds no config mapping")
    return {"model": weights, "config": config, **meta}


def model_card(ckpt: Mapping[str, Any], results: Mapping[str, dict] | None, name: str) -> ModelCard:
    """README.md: Hub metadata, the encoder it needs, how to score it, the results table."""
    cfg = ckpt["config"]
    enc = cfg["model"]["encoder"]
    hub_id = str(enc["name"])
    data = ModelCardData(
        library_name="pytorch",
        pipeline_tag="image-segmentation",
        tags=["camouflaged-object-detection", "e2net"],
        base_model=hub_id if enc["backend"] == "hf" else None,
    )
    fingerprint = (ckpt.get("encoder") or {}).get("weights_hash", "not recorded")
    adapters = (enc.get("adapter") or {}).get("blocks")  # absent from configs saved before adapters existed
    if adapters:
        adapters = "every block" if adapters == "all" else f"blocks {adapters} (counted from 0)"
    score = f"python test.py --ckpt {name} data.root=data/COD"
    lines = [
        f"# {name}: camouflaged object detection on {hub_id}",
        "",
        f"An E2Net decoder ({cfg['model']['decoder']}, width {cfg['model']['channels']}) on the frozen "
        f"features of `{hub_id}` (blocks {enc['layers'] or 'evenly spaced'}"
        f"{', LoRA rank ' + str(enc['lora']['rank']) if enc['lora']['rank'] else ''}"
        f"{', bottleneck adapters after ' + adapters if adapters else ''}), "
        f"{cfg['data']['image_size']} px inputs, {ckpt.get('step')} optimizer steps ({ckpt.get('epoch')} epochs).",
        "",
        "## The encoder it needs",
        "",
        f"`{WEIGHTS_NAME}` holds the trained parts only. The frozen encoder `{hub_id}` ({enc['backend']}) "
        "is not in this folder: with access to it (a gated model needs its licence accepted) it is "
        "fetched by its id; with a local copy, add `model.encoder.pretrained_path=FOLDER` to the "
        f"commands below. The scorer warns when the encoder differs from the one trained on "
        f"(fingerprint `{fingerprint}`).",
        *_second_encoder(cfg["model"].get("encoder2") or {}),
        "",
        "## Score it",
        "",
        "With the E2Net-DINOv3 code (its docs/distributed.md for several GPUs):",
        "",
        "```bash",
        score,
        f"torchrun --standalone --nproc-per-node=4 test.py --ckpt {name} data.root=data/COD",
        f"python scripts/export.py --ckpt {name} --onnx {name}.onnx",
        "```",
        "",
        "## Results",
        "",
    ]
    if results:
        lines.append(format_markdown({name: dict(results)}))
    else:
        lines.append(f"No results.json was given at export: `{score}` writes one.")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _second_encoder(enc2: Mapping[str, Any]) -> list[str]:
    """The card's lines on model.encoder2 (a SAM2 Hiera fused with the first), when there is one."""
    if not enc2.get("name"):
        return []
    return [
        "",
        f"It also needs the second encoder `{enc2['name']}` ({enc2['backend']}), fused with the first: "
        "with a local copy, add `model.encoder2.pretrained_path=FOLDER` too.",
    ]


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload ``folder`` to the Hub model repository ``repo_id`` (created when missing) with
    huggingface_hub's token (``hf auth login`` or ``HF_TOKEN``); returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return str(url)
