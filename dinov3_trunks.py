"""Trunks (DINOv3 and DINOv2, from transformers or timm) and what is read about them before building.

The code lives in the ``encoders`` package: ``encoders.trunks`` (one interface over every library's
model), ``encoders.loading`` (loading, architecture, the absent-weights error) and ``encoders.lora``
(LoRA through peft). This module is the entry point callers import.
"""

from __future__ import annotations

from encoders.loading import (
    CONVNEXT_STRIDE,
    SUPPORTED,
    Architecture,
    default_layers,
    load_trunk,
    nearest_sizes,
    read_architecture,
    weights_missing_error,
)
from encoders.lora import LoRA, add_lora, lora_dropouts
from encoders.trunks import Family, HFViT, TimmConvNeXt, TimmViT, Trunk

__all__ = [
    "CONVNEXT_STRIDE",
    "SUPPORTED",
    "Architecture",
    "Family",
    "HFViT",
    "LoRA",
    "TimmConvNeXt",
    "TimmViT",
    "Trunk",
    "add_lora",
    "default_layers",
    "load_trunk",
    "lora_dropouts",
    "nearest_sizes",
    "read_architecture",
    "weights_missing_error",
]
