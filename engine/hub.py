"""A trained model as a Hugging Face-format folder: what to share, and what test.py and the ONNX
export read back like a checkpoint.

    DIR/config.json        the resolved training config (the one a checkpoint stores)
    DIR/model.safetensors  the trained weights only (decoder, heads, LoRA, unfrozen blocks); the
                           frozen encoder is not in it (its weights are the encoder's owner's to
                           share): config.json names it and the model card says where to get it
    DIR/README.md          the model card: the encoder it needs, how to score it, the results

The rest of what a checkpoint holds for scoring (the encoder's fingerprint, epoch, step, the best
validation metric) travels in the safetensors header, as JSON strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engine.checkpoint import CheckpointError, first_line

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
# Checkpoint entries the folder keeps besides the weights and the config (header metadata).
META_KEYS = ("encoder", "epoch", "step", "best", "metrics", "versions")


def is_hf_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / WEIGHTS_NAME).is_file()


def save_hf_folder(ckpt: Mapping[str, Any], out: Path, results: Mapping[str, dict] | None = None) -> Path:
    """Write checkpoint ``ckpt`` (train.py's, with its ``model`` and ``config`` entries) as a folder
    ``out``; ``results`` (a results.json) goes into the model card. Returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in ckpt["model"].items()}
    metadata = {"format": "pt", **{k: json.dumps(ckpt.get(k)) for k in META_KEYS}}
    save_file(weights, out / WEIGHTS_NAME, metadata=metadata)
    (out / CONFIG_NAME).write_text(json.dumps(ckpt["config"], indent=2) + "\n")
    model_card(ckpt, results, out.name).save(out / CARD_NAME)
    return out


def load_hf_folder(path: Path) -> dict[str, Any]:
    """The folder as a checkpoint dict: ``model`` (tensors), ``config`` and :data:`META_KEYS`."""
    path = Path(path)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise CheckpointError(f"'{path}' is not a model folder written by scripts/export.py --hf: no {name}")
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
        weights = load_file(path / WEIGHTS_NAME)
        with safe_open(path / WEIGHTS_NAME, framework="pt") as f:
            metadata = f.metadata() or {}
        meta = {k: json.loads(metadata[k]) for k in META_KEYS if k in metadata}
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"model folder '{path}' is damaged ({first_line(err)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"model folder '{path}': {CONFIG_NAME} is not a config mapping")
    return {"model": weights, "config": config, **meta}


def model_card(ckpt: Mapping[str, Any], results: Mapping[str, dict] | None, name: str) -> ModelCard:
    """The folder's README.md: Hub metadata, the encoder it needs, how to score it, the results."""
    from evaluation.tables import LEGEND, format_markdown

    cfg = ckpt["config"]
    enc = cfg["model"]["encoder"]
    data = ModelCardData(
        library_name="pytorch",
        pipeline_tag="image-segmentation",
        tags=["camouflaged-object-detection", "e2net", "safetensors"],
        base_model=enc["name"] if enc.get("backend") == "hf" else None,
    )
    size = cfg["data"]["image_size"]
    lines = [
        f"# {name}: camouflaged object detection on {enc['name']}",
        "",
        f"E2Net decoder trained on frozen features of `{enc['name']}` (layers {enc.get('layers')}), "
        f"{size} px inputs; {ckpt.get('step')} optimizer steps ({ckpt.get('epoch')} epochs).",
        "",
        "## The encoder it needs",
        "",
        f"`model.safetensors` holds the trained parts only. The frozen encoder `{enc['name']}` is not "
        "in this folder: get it from its owner (a gated model needs you to accept its licence, then e.g. "
        f"`hf download {enc['name']} --local-dir encoders/{Path(str(enc['name'])).name}`) and give its "
        "folder as `model.encoder.pretrained_path`. The scorer checks it is the same encoder "
        f"(fingerprint `{(ckpt.get('encoder') or {}).get('weights_hash', 'not recorded')}`).",
        "",
        "## Score it",
        "",
        "```bash",
        f"python test.py --ckpt {name} model.encoder.pretrained_path=PATH data.root=data/COD",
        f"torchrun --standalone --nproc-per-node=4 test.py --ckpt {name} model.encoder.pretrained_path=PATH",
        "```",
        "",
        f"ONNX: `python scripts/export.py --ckpt {name} --onnx {name}.onnx model.encoder.pretrained_path=PATH`.",
        "",
        "## Results",
        "",
    ]
    if results:
        lines += [format_markdown({name: dict(results)}), "", LEGEND]
    else:
        lines.append("No results.json was given: score it with the command above.")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload ``folder`` to the Hub model repository ``repo_id`` (created if missing); the token is
    huggingface_hub's (``hf auth login`` or ``HF_TOKEN``). Returns the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return str(url)
