"""Loading a trunk and reading its architecture, from transformers or timm.

Everything about a model is read from the model itself: the family, patch size, width, depth and
register count from the checkpoint's ``config.json`` (transformers) or the timm model built on the
meta device; the normalisation from ``preprocessor_config.json`` (or timm's pretrained config).
Absent weights become one error that says where to put them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from encoders.trunks import CONVNEXT_STRIDE, HF_FAMILIES, Family, HFViT, TimmConvNeXt, TimmViT, Trunk, square

log = logging.getLogger(__name__)

MIN_TRANSFORMERS = "4.56"
META_DOWNLOADS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
SUPPORTED = (
    "transformers: dinov3_vit (facebook/dinov3-vit*), dinov2 (facebook/dinov2-*), dinov2_with_registers "
    "(facebook/dinov2-with-registers-*); timm: vit_*_dinov3, convnext_*.dinov3_lvd1689m, vit_*_patch14_dinov2, "
    "vit_*_patch14_reg4_dinov2"
)


@dataclass(frozen=True)
class Architecture:
    """What a config must agree with, read before any weight is loaded."""

    family: Family
    patch_size: int  # image sizes must be multiples of it
    depth: int  # blocks of a ViT, stages of a ConvNeXt: what model.encoder.layers index
    width: int
    registers: int


def default_layers(depth: int) -> tuple[int, int, int, int]:
    """Blocks tapped by default: evenly spaced quarters of the depth, the last block included."""
    return tuple(max(1, depth * k // 4) for k in (1, 2, 3, 4))  # type: ignore[return-value]


def nearest_sizes(size: int, patch: int) -> list[int]:
    """The multiples of ``patch`` nearest to ``size``, nearest first (never below one patch)."""
    low, high = max(patch, size // patch * patch), max(patch, -(-size // patch) * patch)
    return sorted({low, high}, key=lambda s: (abs(s - size), s))


def read_architecture(
    model_name: str, pretrained_path: str | None = None, backend: str = "hf", timm_kwargs: dict | None = None
) -> Architecture:
    """The architecture from ``config.json`` only (transformers) or a weightless timm model."""
    if backend == "timm":
        with torch.device("meta"):
            trunk = _timm_trunk(_create_timm(model_name, None, dict(timm_kwargs or {}), load=False), model_name)
        return Architecture(trunk.family, trunk.patch_size, trunk.depth, trunk.embed_dim, trunk.num_registers)
    config = _load_hf_config(model_name, pretrained_path)
    family = _hf_family(config.model_type, _local(pretrained_path) or model_name)
    return Architecture(
        family,
        square(config.patch_size, "patch_size"),
        int(config.num_hidden_layers),
        int(config.hidden_size),
        int(getattr(config, "num_register_tokens", 0) or 0),
    )


def load_trunk(
    model_name: str, pretrained_path: str | None, backend: str = "hf", timm_kwargs: dict | None = None
) -> tuple[Trunk, Sequence[float], Sequence[float]]:
    """The trunk of ``backend`` ("hf" or "timm") with its normalisation mean and std."""
    if backend == "hf":
        if timm_kwargs:
            raise ValueError("timm_kwargs apply to backend='timm' only")
        model, mean, std = _load_hf(model_name, pretrained_path)
        return HFViT(model), mean, std
    model = _create_timm(model_name, pretrained_path, dict(timm_kwargs or {}))
    mean = model.pretrained_cfg.get("mean") or IMAGENET_DEFAULT_MEAN
    std = model.pretrained_cfg.get("std") or IMAGENET_DEFAULT_STD
    return _timm_trunk(model, model_name), mean, std


def weights_missing_error(model_name: str, pretrained_path: str | None, backend: str = "hf") -> FileNotFoundError:
    """The one error for absent weights: what was tried, the license, where to put the files."""
    tried = f"'{pretrained_path}' and " if pretrained_path else ""
    if backend == "timm":
        return FileNotFoundError(
            f"weights for timm model '{model_name}' not found: tried {tried}timm's hub copy (offline, or no "
            f"access). DINOv3 weights are gated under the DINOv3 license: request them at {META_DOWNLOADS}; "
            f"place the .pth (Meta's DINOv3 link, or DINOv2's dinov2_vitb14_pretrain.pth) under checkpoint/ "
            f"and set model.encoder.pretrained_path to that file"
        )
    folder = f"checkpoint/{model_name.rstrip('/').split('/')[-1]}/"
    return FileNotFoundError(
        f"encoder weights not found: tried {tried}the hub id '{model_name}' (offline, or no access). DINOv3 "
        f"weights are gated under the DINOv3 license: accept it at https://huggingface.co/{model_name}, then "
        f"log in (`hf auth login`) or download the snapshot (config.json, model.safetensors, "
        f"preprocessor_config.json) into {folder} and set model.encoder.pretrained_path={folder}"
    )


# --------------------------------------------------------------------------- transformers
def _require_transformers() -> None:
    """transformers with DINOv3 (>= 4.56), or an error naming the version needed."""
    import transformers
    from packaging.version import Version

    have = transformers.__version__
    try:
        if Version(have) < Version(MIN_TRANSFORMERS):
            raise ImportError
        from transformers import DINOv3ViTModel  # noqa: F401
    except ImportError:
        raise ImportError(
            f"transformers {have} has no DINOv3 models; DINOv3 needs transformers >= {MIN_TRANSFORMERS}: "
            f"pip install -U 'transformers>={MIN_TRANSFORMERS}'"
        ) from None


def _local(pretrained_path: str | None) -> Path | None:
    """The local folder if it holds a model, else None (the hub id is tried next)."""
    if pretrained_path and (Path(pretrained_path) / "config.json").is_file():
        return Path(pretrained_path)
    if pretrained_path:
        log.warning("'%s' holds no config.json: trying the hub id instead", pretrained_path)
    return None


def _hf_family(model_type: str, source) -> Family:
    if model_type not in HF_FAMILIES:
        raise ValueError(
            f"'{source}' holds a '{model_type}' model, not a supported family; supported: {SUPPORTED} "
            "(DINOv3 ConvNeXts load with model.encoder.backend=timm)"
        )
    return HF_FAMILIES[model_type][0]


def _load_hf_config(model_name: str, pretrained_path: str | None):
    _require_transformers()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(_local(pretrained_path) or model_name)
    except OSError:
        raise weights_missing_error(model_name, pretrained_path) from None
    except ValueError as err:  # a config.json of a model type this transformers does not know
        raise ValueError(
            f"'{pretrained_path or model_name}': {str(err).splitlines()[0]}; supported: {SUPPORTED}"
        ) from None


def _norm_stats(source: str | Path) -> tuple[Sequence[float], Sequence[float]]:
    """mean/std from preprocessor_config.json (a local folder or the hub cache), else ImageNet's."""
    from transformers.utils import cached_file

    try:
        path = cached_file(str(source), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    if path is None:
        log.warning("no preprocessor_config.json for %s: using ImageNet mean/std", source)
        return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    cfg = json.loads(Path(path).read_text())
    mean, std = cfg.get("image_mean", IMAGENET_DEFAULT_MEAN), cfg.get("image_std", IMAGENET_DEFAULT_STD)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{path}: image_mean/image_std must hold 3 values each, got {mean} / {std}")
    return mean, std


@contextlib.contextmanager
def _progress_bars_only_on_a_terminal() -> Iterator[None]:
    """transformers draws a weight-loading bar on stderr; in a redirected log it is only noise."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was and not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _load_hf(model_name: str, pretrained_path: str | None):
    source = _local(pretrained_path) or model_name
    _hf_family(_load_hf_config(model_name, pretrained_path).model_type, source)
    from transformers import AutoModel

    try:
        with _progress_bars_only_on_a_terminal():
            model = AutoModel.from_pretrained(source, dtype=torch.float32)
    except OSError:
        raise weights_missing_error(model_name, pretrained_path) from None
    return model, *_norm_stats(source)


# --------------------------------------------------------------------------- timm
def _timm_names() -> list[str]:
    import timm

    return (
        timm.list_models("*dinov3*")
        + timm.list_models("convnext*.dinov3*", pretrained=True)
        + timm.list_models("vit_*_patch14*dinov2")
    )


def _create_timm(model_name: str, pretrained_path: str | None, kwargs: dict, load: bool = True) -> nn.Module:
    import timm
    from timm.models import is_model_in_modules

    arch = model_name.split(".")[0]
    if not timm.list_models(arch):
        raise ValueError(
            f"timm {timm.__version__} has no model '{model_name}'; its DINO models: {', '.join(_timm_names())}"
        )
    if pretrained_path is not None and not Path(pretrained_path).is_file():
        raise weights_missing_error(model_name, pretrained_path, "timm")
    if is_model_in_modules(arch, ["vision_transformer", "eva"]):
        kwargs.setdefault("dynamic_img_size", True)  # any multiple of the patch, position embeddings interpolated
    # A Meta-format .pth goes through timm's own checkpoint filter (key renames, qkv-bias split,
    # DINOv2's register tokens); timm reads it with weights_only=True, so a file cannot run code.
    overlay = {"file": str(pretrained_path)} if pretrained_path else None
    try:
        return timm.create_model(model_name, pretrained=load, pretrained_cfg_overlay=overlay, num_classes=0, **kwargs)
    except OSError:
        raise weights_missing_error(model_name, pretrained_path, "timm") from None
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"could not load '{pretrained_path}' into timm model '{model_name}': {first}") from None


def _timm_trunk(model: nn.Module, name: str) -> Trunk:
    from timm.models.convnext import ConvNeXt
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, Eva) and model.cls_token is not None:
        return TimmViT(model, Family.dinov3_vit)
    if isinstance(model, VisionTransformer) and model.cls_token is not None and "dinov2" in name:
        return TimmViT(model, Family.dinov2_with_registers if model.reg_token is not None else Family.dinov2)
    if isinstance(model, ConvNeXt):
        return TimmConvNeXt(model)
    raise ValueError(
        f"timm model '{name}' ({type(model).__name__}) is not of a supported family; supported: {SUPPORTED}"
    )


__all__ = [
    "CONVNEXT_STRIDE",
    "Architecture",
    "default_layers",
    "load_trunk",
    "nearest_sizes",
    "read_architecture",
    "weights_missing_error",
]
