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


@dataclass(frozen=True)
class WeightsHelp:
    """How one family's weights are had, for :func:`weights_missing_error`. ``hf_fetch`` and
    ``timm_fetch`` may name ``{name}`` (the hub id or timm name) and ``{folder}`` (checkpoint/<name>/)."""

    what: str  # what a hub id's loader did not find
    licence: str
    unreachable: str  # why the hub copy may not have come
    hf_fetch: str
    timm_fetch: str


DINO_WEIGHTS = WeightsHelp(
    what="encoder weights",
    licence="DINOv3 weights are gated under the DINOv3 license",
    unreachable="offline, or no access",
    hf_fetch="accept it at https://huggingface.co/{name}, then log in (`hf auth login`) or download the snapshot "
    "(config.json, model.safetensors, preprocessor_config.json) into {folder}",
    timm_fetch=f"request them at {META_DOWNLOADS}; place the .pth (Meta's DINOv3 link, or DINOv2's "
    "dinov2_vitb14_pretrain.pth) under checkpoint/",
)


def weights_missing_error(
    model_name: str, pretrained_path: str | None, backend: str = "hf", how: WeightsHelp = DINO_WEIGHTS
) -> FileNotFoundError:
    """The one error for absent weights: what was tried, the licence, how to fetch the files and the
    key to set (model.encoder.pretrained_path). ``how``: DINO's instructions unless given (SAM2's:
    :data:`encoders.hiera.SAM2_WEIGHTS`)."""
    tried = f"'{pretrained_path}' and " if pretrained_path else ""
    folder = f"checkpoint/{model_name.rstrip('/').split('/')[-1]}/"
    key = "model.encoder.pretrained_path"
    if backend == "timm":
        what, where, fetch, then = (
            f"weights for timm model '{model_name}'",
            "timm's hub copy",
            how.timm_fetch,
            f"{key} to that file",
        )
    else:
        what, where, fetch, then = how.what, f"the hub id '{model_name}'", how.hf_fetch, f"{key}={folder}"
    fetch = fetch.format(name=model_name, folder=folder)
    return FileNotFoundError(
        f"{what} not found: tried {tried}{where} ({how.unreachable}). {how.licence}: {fetch} and set {then}"
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
            model, info = AutoModel.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
    except OSError:
        raise weights_missing_error(model_name, pretrained_path) from None
    refuse_missing(info["missing_keys"], source, "of the encoder", "was it saved whole by save_pretrained?")
    return model, *_norm_stats(source)


class IncompleteWeights(FileNotFoundError):
    """Weights that lack tensors of the trunk: the tensors needed are not found (a user error, one line)."""


def refuse_missing(missing, source: str, what: str, hint: str, prefix: str = "") -> None:
    """transformers fills a tensor missing from the weights with a random one and only logs it: an
    encoder that is silently part random. Refused instead, naming one of them."""
    if missing:
        missing = sorted(missing)
        raise IncompleteWeights(f"'{source}' lacks {len(missing)} tensors {what} (e.g. {prefix}{missing[0]}); {hint}")


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
    "read_architecture",
    "DINO_WEIGHTS",
    "WeightsHelp",
    "IncompleteWeights",
    "refuse_missing",
    "weights_missing_error",
]
