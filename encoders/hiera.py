"""SAM2's Hiera image encoder as a :class:`~encoders.trunks.Trunk`: four stages at strides 4, 8, 16, 32.

Hiera is hierarchical: every block maps a [B, h, w, C] grid to another, and the first block of
stages 2-4 pools its queries, halving h and w and doubling C. The last block of each stage gives one
pyramid level (SAM2's own neck reads these four, with no final norm). ``taps`` count blocks from 1,
as for a ViT, so ``pyramid_taps`` (the stage ends) tap the four levels; any other block can be tapped too.

Two libraries, one trunk:

- transformers ``Sam2HieraDetModel``: a folder of the bare trunk, or the trunk inside a whole
  ``Sam2Model`` / ``Sam2VideoModel`` / ``Sam2VisionModel`` checkpoint (``facebook/sam2.1-hiera-*``
  are whole SAM2 models). ``from_pretrained`` reads only the trunk's tensors, renaming them with its
  ``key_mapping`` (``vision_encoder.backbone.blocks.0...`` -> ``blocks.0...``); the neck, prompt
  encoder, mask decoder and memory are never built.
- timm ``sam2_hiera_{tiny,small,base_plus,large}``: timm's hub weights, a timm-format file, or Meta's
  ``sam2*_hiera_*.pt`` (keys under ``image_encoder.trunk.``, renamed by timm's own filter).

Input sizes must be multiples of 32 (non-square is fine): the window position embedding tiles the
stride-4 grid in windows of the first stage, and three poolings must divide evenly.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from encoders.loading import (
    Architecture,
    WeightsHelp,
    _load_hf_config,
    _local,
    _norm_stats,
    _progress_bars_only_on_a_terminal,
    refuse_missing,
    weights_missing_error,
)
from encoders.trunks import Family, Trunk, _distinct_indices, square

HF_TRUNK_TYPE = "sam2_hiera_det_model"
META_PREFIX = "image_encoder.trunk."  # where Meta's sam2*_hiera_*.pt files keep the trunk
TIMM_PATTERN = "sam2_hiera_*"


class Hiera(Trunk):
    """A Hiera trunk: ``depth`` blocks in stages; ``pyramid_taps`` (stage ends, from 1) tap the four levels.

    ``patch_size`` is the input granularity (32 for every SAM2 size), not a patch: the stem is a
    7x7 convolution of stride 4.
    """

    family = Family.sam2_hiera
    lora_targets = ("attn.qkv", "attn.proj")  # named alike in transformers and timm

    def __init__(self, model: nn.Module, stages: Sequence[int], widths: Sequence[int], strides: Sequence[int], window):
        super().__init__()
        self.model = model
        self.pyramid_taps = tuple(itertools.accumulate(stages))
        self.depth = self.pyramid_taps[-1]
        self._stage_of = [s for s, n in enumerate(stages) for _ in range(n)]
        self.widths, self.strides = tuple(widths), tuple(strides)
        self.embed_dim = self.widths[-1]
        # Whole windows of position embedding on the first grid, whole cells after the last pooling.
        self.patch_size = math.lcm(self.strides[0] * window, self.strides[-1])

    @property
    def blocks(self) -> Sequence[nn.Module]:
        return self.model.blocks

    def tap_shapes(self, taps):
        stages = [self._stage_of[t - 1] for t in taps]
        return [self.widths[s] for s in stages], [self.strides[s] for s in stages]

    def last_tokens(self, x):
        """No class token: "cls" is the mean of the last stage's map, "registers" is empty."""
        last = self(x, [self.depth])[0]
        cls = last.mean(dim=(2, 3))
        return {"cls": cls, "registers": cls.new_zeros(cls.shape[0], 0, cls.shape[1]), "patches": last}


def _strides(first: int, pool: int, pooled_stages: int, n_stages: int) -> list[int]:
    return [first * pool ** min(s, pooled_stages) for s in range(n_stages)]


class HFHiera(Hiera):
    """transformers' ``Sam2HieraDetModel``."""

    def __init__(self, model: nn.Module):
        c = model.config
        strides = _strides(
            square(c.patch_stride, "patch_stride"),
            square(c.query_stride, "query_stride"),
            c.num_query_pool_stages,
            len(c.blocks_per_stage),
        )
        super().__init__(model, c.blocks_per_stage, c.embed_dim_per_stage, strides, c.window_size_per_stage[0])

    def forward(self, x, taps, norm=True):  # no final norm: ``norm`` changes nothing
        if set(taps) <= set(self.pyramid_taps):  # the stage outputs every forward returns anyway
            hidden = dict(zip(self.pyramid_taps, self.model(pixel_values=x).intermediate_hidden_states))
        else:  # [B, h, w, C] grids: the embedded input, then one per block
            hidden = dict(enumerate(self.model(pixel_values=x, output_hidden_states=True).hidden_states))
        return [hidden[t].permute(0, 3, 1, 2) for t in taps]


class TimmHiera(Hiera):
    """timm's ``HieraDet`` (``sam2_hiera_*``); its classifier head is never used."""

    def __init__(self, model: nn.Module):
        ends = [0] + [e + 1 for e in model.stage_ends]
        stages = [b - a for a, b in itertools.pairwise(ends)]
        first = square(model.patch_embed.proj.stride, "patch stride")
        strides = _strides(first, square(model.q_stride, "q_stride"), len(model.q_pool_blocks), len(stages))
        widths = [f["num_chs"] for f in model.feature_info]
        super().__init__(model, stages, widths, strides, model.window_spec[0])

    def never_trained(self):
        return list(self.model.head.parameters())

    def forward(self, x, taps, norm=True):  # no final norm: ``norm`` changes nothing
        indices = _distinct_indices(taps)
        x = x.to(self.model.patch_embed.proj.weight.dtype)  # frozen weights may be stored in bf16
        maps = self.model.forward_intermediates(
            x, indices=indices, coarse=False, stop_early=True, output_fmt="NCHW", intermediates_only=True
        )
        return [maps[indices.index(t - 1)] for t in taps]


# --------------------------------------------------------------------------- loading
def is_hiera(model_name: str, pretrained_path: str | None, backend: str) -> bool:
    """Whether this encoder entry names a SAM2 Hiera (read from config.json, or the timm name)."""
    if backend == "timm":
        return model_name.split(".")[0].startswith(TIMM_PATTERN.rstrip("*"))
    try:
        config = _load_hf_config(model_name, pretrained_path)
    except FileNotFoundError:
        if "sam2" in model_name.lower():  # no weights to read: the name says which instructions apply
            raise hiera_weights_missing_error(model_name, pretrained_path) from None
        raise
    return _trunk_config(config) is not None


def _trunk_config(config) -> tuple[object, str] | None:
    """(Hiera config, prefix of its weights) inside a SAM2 checkpoint's config, or None for another model."""
    if config.model_type == HF_TRUNK_TYPE:
        return config, ""
    for prefix, parent in (("", config), ("vision_encoder.", getattr(config, "vision_config", None))):
        backbone = getattr(parent, "backbone_config", None)
        if backbone is not None and getattr(backbone, "model_type", None) == HF_TRUNK_TYPE:
            return backbone, prefix + "backbone."
    return None


SAM2_WEIGHTS = WeightsHelp(
    what="SAM2 weights",
    licence="SAM2 weights are public (Apache-2.0)",
    unreachable="offline?",
    hf_fetch="`hf download {name} --local-dir {folder}`",
    timm_fetch="download Meta's sam2.1_hiera_*.pt (https://github.com/facebookresearch/sam2)",
)


def hiera_weights_missing_error(model_name: str, pretrained_path: str | None, backend: str = "hf") -> FileNotFoundError:
    """The one error for absent SAM2 weights: :func:`~encoders.loading.weights_missing_error` with SAM2's instructions."""
    return weights_missing_error(model_name, pretrained_path, backend, SAM2_WEIGHTS)


@contextlib.contextmanager
def _no_load_report() -> Iterator[None]:
    """transformers logs every tensor of a whole SAM2 checkpoint that the trunk does not use (its
    "LOAD REPORT"); the caller checks for missing tensors itself. A filter, not a level: the loader
    runs extra checks, with warnings of their own, when its logger's level is raised."""
    log = logging.getLogger("transformers.modeling_utils")

    def keep(record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()

    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def _load_hf_hiera(model_name: str, pretrained_path: str | None) -> tuple[Hiera, Sequence[float], Sequence[float]]:
    from transformers import Sam2HieraDetModel

    source = _local(pretrained_path) or model_name
    found = _trunk_config(_load_hf_config(model_name, pretrained_path))
    if found is None:
        raise ValueError(f"'{source}' holds no SAM2 Hiera trunk (config.json names none)")
    config, prefix = found
    try:
        with _progress_bars_only_on_a_terminal(), _no_load_report():
            model, info = Sam2HieraDetModel.from_pretrained(
                source,
                config=config,
                key_mapping={f"^{re.escape(prefix)}": ""} if prefix else None,
                output_loading_info=True,
                dtype=torch.float32,
            )
    except OSError:
        raise hiera_weights_missing_error(model_name, pretrained_path) from None
    refuse_missing(
        info["missing_keys"], source, "of the Hiera trunk", "is it a SAM2 checkpoint saved by transformers?", prefix
    )
    return HFHiera(model.eval()), *_norm_stats(source)


def _create_timm_hiera(model_name: str, pretrained_path: str | None, kwargs: dict, load: bool = True) -> nn.Module:
    import timm
    from timm.models import load_state_dict
    from timm.models.hieradet_sam2 import checkpoint_filter_fn

    if not model_name.startswith(TIMM_PATTERN.rstrip("*")) or not timm.list_models(model_name.split(".")[0]):
        raise ValueError(
            f"'{model_name}' is not a timm SAM2 Hiera; timm has: {', '.join(timm.list_models(TIMM_PATTERN))}"
        )
    if not load or pretrained_path is None:
        try:
            return timm.create_model(model_name, pretrained=load, num_classes=0, **kwargs)
        except OSError:
            raise hiera_weights_missing_error(model_name, pretrained_path, "timm") from None
    if not Path(pretrained_path).is_file():
        raise hiera_weights_missing_error(model_name, pretrained_path, "timm")
    model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
    state = load_state_dict(str(pretrained_path))  # weights_only: a file cannot run code
    prefix = META_PREFIX if any(k.startswith(META_PREFIX) for k in state) else ""
    where = f"could not load '{pretrained_path}' into timm model '{model_name}'"
    try:
        result = model.load_state_dict(checkpoint_filter_fn(state, model, prefix=prefix), strict=False)
    except RuntimeError as err:  # shapes of another Hiera size
        raise ValueError(f"{where}: {str(err).strip().splitlines()[-1].strip()} (another Hiera size?)") from None
    # SAM2 has no classifier: timm's head (a norm here) stays as built and is never used.
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{where}: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model


def load_hiera(
    model_name: str, pretrained_path: str | None, backend: str = "hf", timm_kwargs: dict | None = None
) -> tuple[Hiera, Sequence[float], Sequence[float]]:
    """The Hiera trunk of ``backend`` ("hf" or "timm") with its normalisation mean and std.

    hf: ``pretrained_path`` is a folder (config.json, model.safetensors, preprocessor_config.json) of a
    whole SAM2 model or a bare trunk, tried before the hub id ``model_name``. timm: ``model_name`` is
    ``sam2_hiera_{tiny,small,base_plus,large}[.tag]``, ``pretrained_path`` a timm-format file or Meta's
    ``.pt``; without one timm's hub weights are tried. ``timm_kwargs`` go to ``timm.create_model``.
    """
    if backend == "hf":
        if timm_kwargs:
            raise ValueError("timm_kwargs apply to backend='timm' only")
        return _load_hf_hiera(model_name, pretrained_path)
    model = _create_timm_hiera(model_name, pretrained_path, dict(timm_kwargs or {}))
    mean = model.pretrained_cfg.get("mean") or IMAGENET_DEFAULT_MEAN
    std = model.pretrained_cfg.get("std") or IMAGENET_DEFAULT_STD
    return TimmHiera(model.eval()), mean, std


def read_hiera_architecture(
    model_name: str, pretrained_path: str | None = None, backend: str = "hf", timm_kwargs: dict | None = None
) -> Architecture:
    """The architecture from config.json (transformers) or a timm name, built on the meta device: no weights."""
    with torch.device("meta"):
        if backend == "timm":
            trunk: Hiera = TimmHiera(_create_timm_hiera(model_name, None, dict(timm_kwargs or {}), load=False))
        else:
            from transformers import Sam2HieraDetModel

            found = _trunk_config(_load_hf_config(model_name, pretrained_path))
            if found is None:
                raise ValueError(f"'{pretrained_path or model_name}' holds no SAM2 Hiera trunk")
            trunk = HFHiera(Sam2HieraDetModel(found[0]))
    return Architecture(trunk.family, trunk.patch_size, trunk.depth, trunk.embed_dim, 0)
