"""DINOv3 trunks from transformers or timm, behind one interface, and the loading around them.

``_HFViT`` / ``_TimmViT`` expose a DINOv3 ViT as embed -> blocks -> final norm so that the encoder
can run blocks one by one, stop at the last tapped layer and keep frozen blocks out of autograd;
``_TimmConvNeXt`` exposes a DINOv3 ConvNeXt's four stages. Loading reads the token layout, patch
size and normalisation from the checkpoint itself, and turns absent weights into one error that
says where to put them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

MIN_TRANSFORMERS = "4.56"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONVNEXT_STRIDE = 32  # input granularity of a four-stage ConvNeXt
META_DOWNLOADS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"


# --------------------------------------------------------------------------- helpers usable before building
def default_layers(depth: int) -> tuple[int, int, int, int]:
    """Blocks tapped by default: evenly spaced quarters of the depth, the last block included."""
    return tuple(max(1, depth * k // 4) for k in (1, 2, 3, 4))  # type: ignore[return-value]


def read_patch_size(model_name: str, pretrained_path: str | None = None, backend: str = "hf") -> int:
    """Input sizes must be multiples of this; reads config.json only (hf) or builds on the meta device (timm)."""
    if backend == "timm":
        with torch.device("meta"):
            model = _create_timm(model_name, None, {}, load=False)
        return _timm_patch_size(model)
    config = _load_hf_config(model_name, pretrained_path)
    return _square(config.patch_size, "patch_size")


def read_depth(model_name: str, pretrained_path: str | None = None, backend: str = "hf") -> int:
    """Transformer blocks of the ViT (stages of a ConvNeXt), read like :func:`read_patch_size`, nothing loaded."""
    if backend == "timm":
        with torch.device("meta"):
            model = _create_timm(model_name, None, {}, load=False)
        return len(model.blocks) if hasattr(model, "blocks") else len(model.stages)
    return int(_load_hf_config(model_name, pretrained_path).num_hidden_layers)


def _square(size, what: str) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square {what} {size} is not supported")
        size = size[0]
    return int(size)


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


def weights_missing_error(model_name: str, pretrained_path: str | None, backend: str = "hf") -> FileNotFoundError:
    """The one error for absent weights: what was tried, the license, where to put the files."""
    tried = f"'{pretrained_path}' and " if pretrained_path else ""
    if backend == "timm":
        return FileNotFoundError(
            f"DINOv3 weights for timm model '{model_name}' not found: tried {tried}timm's hub copy (offline, or no "
            f"access). The weights are gated under the DINOv3 license: request them at {META_DOWNLOADS}, place "
            f"the .pth Meta's link gives under checkpoint/ and set model.encoder.pretrained_path to that file"
        )
    folder = f"checkpoint/{model_name.rstrip('/').split('/')[-1]}/"
    return FileNotFoundError(
        f"DINOv3 weights not found: tried {tried}the hub id '{model_name}' (offline, or no access). The weights "
        f"are gated under the DINOv3 license: accept it at https://huggingface.co/{model_name}, then log in "
        f"(`hf auth login`) or download the snapshot (config.json, model.safetensors, preprocessor_config.json) "
        f"into {folder} and set model.encoder.pretrained_path={folder}"
    )


def _local(pretrained_path: str | None) -> Path | None:
    """The local folder if it holds a model, else None (the hub id is tried next)."""
    if pretrained_path and (Path(pretrained_path) / "config.json").is_file():
        return Path(pretrained_path)
    if pretrained_path:
        log.warning("'%s' holds no config.json: trying the hub id instead", pretrained_path)
    return None


def _load_hf_config(model_name: str, pretrained_path: str | None):
    _require_transformers()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(_local(pretrained_path) or model_name)
    except OSError:
        raise weights_missing_error(model_name, pretrained_path) from None


def _norm_stats(source: str | Path) -> tuple[Sequence[float], Sequence[float]]:
    """mean/std from preprocessor_config.json (a local folder or the hub cache), else ImageNet's."""
    from transformers.utils import cached_file

    try:
        path = cached_file(str(source), "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    if path is None:
        log.warning("no preprocessor_config.json for %s: using ImageNet mean/std", source)
        return IMAGENET_MEAN, IMAGENET_STD
    cfg = json.loads(Path(path).read_text())
    mean, std = cfg.get("image_mean", IMAGENET_MEAN), cfg.get("image_std", IMAGENET_STD)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"{path}: image_mean/image_std must hold 3 values each, got {mean} / {std}")
    return mean, std


def _load_hf(model_name: str, pretrained_path: str | None):
    _require_transformers()
    from transformers import AutoModel

    source = _local(pretrained_path) or model_name
    try:
        model = AutoModel.from_pretrained(source, dtype=torch.float32)
    except OSError:
        raise weights_missing_error(model_name, pretrained_path) from None
    if model.config.model_type != "dinov3_vit":
        raise ValueError(
            f"'{source}' holds a '{model.config.model_type}' model; the hf backend loads DINOv3 ViTs "
            "(use backend='timm' for the DINOv3 ConvNeXts)"
        )
    return model, *_norm_stats(source)


def _create_timm(model_name: str, pretrained_path: str | None, kwargs: dict, load: bool = True) -> nn.Module:
    import timm

    if not timm.list_models(model_name.split(".")[0]):
        names = timm.list_models("*dinov3*") + timm.list_models("convnext*.dinov3*", pretrained=True)
        raise ValueError(f"timm {timm.__version__} has no model '{model_name}'; its DINOv3 models: {', '.join(names)}")
    if pretrained_path is not None and not Path(pretrained_path).is_file():
        raise weights_missing_error(model_name, pretrained_path, "timm")
    # A Meta-format .pth goes through timm's own checkpoint filter (key renames, qkv-bias split);
    # timm reads it with weights_only=True, so a file cannot run code.
    overlay = {"file": str(pretrained_path)} if pretrained_path else None
    try:
        return timm.create_model(model_name, pretrained=load, pretrained_cfg_overlay=overlay, num_classes=0, **kwargs)
    except OSError:
        raise weights_missing_error(model_name, pretrained_path, "timm") from None
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"could not load '{pretrained_path}' into timm model '{model_name}': {first}") from None


def _timm_patch_size(model: nn.Module) -> int:
    if hasattr(model, "patch_embed"):
        return _square(model.patch_embed.patch_size, "patch_size")
    return CONVNEXT_STRIDE


# --------------------------------------------------------------------------- trunks
class ViTTrunk(nn.Module):
    """One view of a DINOv3 ViT from either library: embed -> blocks -> final norm."""

    model: nn.Module
    embed_dim: int
    depth: int
    patch_size: int
    num_registers: int

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, object]:
        raise NotImplementedError

    def run_block(self, i: int, h: torch.Tensor, rope: object) -> torch.Tensor:
        raise NotImplementedError

    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def norm(self) -> nn.Module:
        return self.model.norm

    def never_trained(self) -> list[nn.Parameter]:
        """Weights forward() never uses; kept frozen so DDP sees no parameter without a gradient."""
        return []

    def forward(self, x: torch.Tensor, taps: Sequence[int], frozen_blocks: int) -> list[torch.Tensor]:
        """x: [B, 3, H, W] normalised -> normed tokens [B, 1 + R + h*w, D] after each block in ``taps``.

        Blocks 1..frozen_blocks (and the embedding) run without autograd when ``frozen_blocks`` > 0.
        """
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and frozen_blocks == 0):
            h, rope = self.embed(x)
        norm_dtype = self.norm.weight.dtype
        out = {}
        for i in range(max(taps)):
            with torch.set_grad_enabled(grad and i >= frozen_blocks):
                # Frozen blocks may be stored in bf16 and trainable ones in fp32: feed each its own dtype.
                h = self.run_block(i, h.to(self.blocks[i].norm1.weight.dtype), rope)
            if i + 1 in taps:
                with torch.set_grad_enabled(grad and self.norm.weight.requires_grad):
                    out[i + 1] = self.norm(h.to(norm_dtype))
        return [out[t] for t in taps]


class _HFViT(ViTTrunk):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        c = model.config
        self.embed_dim, self.depth = c.hidden_size, c.num_hidden_layers
        self.patch_size, self.num_registers = _square(c.patch_size, "patch_size"), c.num_register_tokens

    def embed(self, x):
        x = x.to(self.model.embeddings.patch_embeddings.weight.dtype)
        return self.model.embeddings(x), self.model.rope_embeddings(x)

    def run_block(self, i, h, rope):
        return self.model.model.layer[i](h, position_embeddings=rope)

    def never_trained(self):
        return [self.model.embeddings.mask_token]  # masked-image pre-training only

    @property
    def blocks(self):
        return self.model.model.layer


class _TimmViT(ViTTrunk):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.embed_dim, self.depth = model.embed_dim, len(model.blocks)
        self.patch_size, self.num_registers = _timm_patch_size(model), model.num_prefix_tokens - 1

    def embed(self, x):
        m = self.model
        # What timm's own forward_intermediates does, split out so blocks can be run one by one.
        x = m.patch_embed(x.to(m.patch_embed.proj.weight.dtype))
        x, rope = m._pos_embed(x)
        return m.norm_pre(x), rope

    def run_block(self, i, h, rope):
        return self.model.blocks[i](h, rope=rope)

    @property
    def blocks(self):
        return self.model.blocks


class _TimmConvNeXt(nn.Module):
    """timm ConvNeXt: stem + four stages give the pyramid natively; ``blocks`` are its stages."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.depth, self.patch_size, self.num_registers = len(model.stages), CONVNEXT_STRIDE, 0
        self.out_channels = [f["num_chs"] for f in model.feature_info]
        self.strides = [f["reduction"] for f in model.feature_info]
        self.embed_dim = self.out_channels[-1]

    @property
    def blocks(self) -> nn.Sequential:
        return self.model.stages

    def never_trained(self) -> list[nn.Parameter]:
        return list(self.model.head.parameters())  # its norm serves extract() only

    def forward(self, x: torch.Tensor, frozen_blocks: int) -> list[torch.Tensor]:
        grad = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad and frozen_blocks == 0):
            h = self.model.stem(x.to(self.model.stem[0].weight.dtype))
        out = []
        for i, stage in enumerate(self.model.stages):
            with torch.set_grad_enabled(grad and i >= frozen_blocks):
                h = stage(h.to(next(stage.parameters()).dtype))
            out.append(h)
        return out


def _timm_trunk(model: nn.Module, name: str) -> nn.Module:
    from timm.models.convnext import ConvNeXt
    from timm.models.eva import Eva

    if isinstance(model, Eva) and model.cls_token is not None:
        return _TimmViT(model)
    if isinstance(model, ConvNeXt):
        return _TimmConvNeXt(model)
    raise ValueError(
        f"timm model '{name}' ({type(model).__name__}) is neither a DINOv3 ViT (timm's Eva with a CLS "
        "token, e.g. vit_base_patch16_dinov3) nor a ConvNeXt (e.g. convnext_tiny.dinov3_lvd1689m)"
    )


def load_trunk(
    model_name: str, pretrained_path: str | None, backend: str = "hf", timm_kwargs: dict | None = None
) -> tuple[nn.Module, Sequence[float], Sequence[float]]:
    """The trunk of ``backend`` ("hf" or "timm", config.Backend) with its normalisation mean and std."""
    if backend == "hf":
        if timm_kwargs:
            raise ValueError("timm_kwargs apply to backend='timm' only")
        model, mean, std = _load_hf(model_name, pretrained_path)
        return _HFViT(model), mean, std
    model = _create_timm(model_name, pretrained_path, dict(timm_kwargs or {}))
    mean = model.pretrained_cfg.get("mean") or IMAGENET_MEAN
    std = model.pretrained_cfg.get("std") or IMAGENET_STD
    return _timm_trunk(model, model_name), mean, std
