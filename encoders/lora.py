"""LoRA on a frozen trunk through peft: low-rank updates ``B @ A`` beside chosen linear layers.

peft injects the adapters into the library's own model (``inject_adapter_in_model``), so the trunk
keeps its forward and its attribute paths; B starts at zero, so before the first optimizer step
the trunk computes exactly what it computed without LoRA. Only blocks up to the last tapped one
are adapted: an adapter after it would get no gradient, which DistributedDataParallel rejects.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from encoders.trunks import Trunk

# peft names every adapter weight lora_A / lora_B (and its dropout lora_dropout) inside the layer it wraps.
MARKER = ".lora_"


def is_lora(name: str) -> bool:
    """Whether the parameter or module ``name`` belongs to a LoRA adapter."""
    return MARKER in name


@dataclass(frozen=True)
class LoRA:
    """``rank`` 0 = off; ``alpha`` scales the update by alpha / rank; ``targets``: module names
    (a name or the end of a dotted path inside a block, e.g. ``q_proj`` or ``attention.q_proj``);
    empty = the trunk's ``lora_targets`` (its attention projections)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()


def _adaptable(trunk: Trunk, n_blocks: int) -> dict[str, str]:
    """{full module name in trunk.model: name inside its block} for the linear/conv layers of blocks 1..n."""
    names = {id(m): n for n, m in trunk.model.named_modules()}
    out = {}
    for block in list(trunk.blocks)[:n_blocks]:
        prefix = names[id(block)]
        for inner, m in block.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                out[f"{prefix}.{inner}"] = inner
    return out


def add_lora(trunk: Trunk, lora: LoRA, n_blocks: int) -> list[nn.Parameter]:
    """Inject ``lora`` into blocks 1..``n_blocks`` of ``trunk``; returns the new (trainable) parameters.

    Raises ValueError naming the layers that exist when a target matches none of them.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = tuple(lora.targets) or trunk.lora_targets
    layers = _adaptable(trunk, n_blocks)

    def matches(inner: str, target: str) -> bool:
        return inner == target or inner.endswith("." + target)

    unmatched = [t for t in targets if not any(matches(inner, t) for inner in layers.values())]
    if unmatched:
        existing = ", ".join(sorted(set(layers.values())))
        raise ValueError(
            f"model.encoder.lora.targets {list(unmatched)} match no layer of this {trunk.family} trunk's blocks; "
            f"its layers (per block): {existing}"
        )
    chosen = [full for full, inner in layers.items() if any(matches(inner, t) for t in targets)]
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=chosen)
    inject_adapter_in_model(config, trunk.model)
    params = lora_parameters(trunk.model)
    for p in params:
        p.requires_grad_(True)
    return params


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA adapters' weights inside ``module`` (empty without LoRA)."""
    return [p for n, p in module.named_parameters() if is_lora(n)]


def lora_dropouts(module: nn.Module) -> list[nn.Module]:
    """LoRA's dropout layers: they follow the parent's train/eval mode while the trunk stays in eval."""
    return [m for n, m in module.named_modules() if is_lora(n) and isinstance(m, nn.Dropout)]
