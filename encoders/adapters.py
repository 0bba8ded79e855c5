"""Bottleneck adapters after chosen blocks of a frozen ViT or SAM2 Hiera trunk.

After block i the tokens become ``out + s * up(GELU(down(LayerNorm(out))))``: ``down`` maps the
width D to ``max(D // reduction, 32)``, ``up`` maps it back, both without bias; ``up`` starts at
zero and ``s`` (a learned scalar) at ``init_scale``, so before the first optimizer step the trunk
computes exactly what it computed without adapters. The sum is what the next block reads and what
the trunk taps at block i (the adapter design of E2Net-DINOv2, as SAM2-UNet and its successors
adapt Hiera). A Hiera block's output is a [B, h, w, C] grid whose width C grows from stage to stage:
each adapter acts on the last dimension and takes the width of its own block's output.

Each adapter is a forward hook on its block that replaces the block's output. A hook, rather than
a wrapper module put in the block's place, is what transformers sees: it records
``output_hidden_states`` with its own forward hooks on its layer classes, which a wrapper would
leave reading the block's unadapted output; ours is put first (``prepend=True``), so the recorded
hidden state is the adapted one even when transformers installed its hooks earlier. The blocks
keep their names, so state-dict keys, LoRA targets and the library's own forward stay as they were.
The adapters themselves live in ``trunk.adapters`` (a ``ModuleDict`` keyed by block index), so
their parameter names hold ``.adapters.``, which the optimizer groups and checkpoints key on.

SAM2-UNeXT's adapters (``position="before"``, ``form="mlp"``) sit in front of each block instead: a
forward pre-hook hands the block ``x + GELU(up(GELU(down(x))))`` of its input x, at the block's input
width (a Hiera stage's first block reads the previous stage's), both layers with bias, weights
truncated-normal (std 0.02), biases zero, no scale: the trunk is perturbed from the first step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from encoders.rules import check_adapter_family
from encoders.trunks import Trunk


@dataclass(frozen=True)
class Adapters:
    """Which blocks get an adapter (0-based indices, or ``"all"``; empty = none), the bottleneck's
    ``reduction`` and the starting ``init_scale`` of the learned scale."""

    blocks: tuple[int, ...] | str = ()
    reduction: int = 4
    init_scale: float = 1e-3
    position: str = "after"  # after: on the block's output; before: on its input
    form: str = "bottleneck"  # bottleneck (BlockAdapter) or mlp (MLPAdapter)


ADAPTERS_ATTR = "adapters"  # trunk.adapters; its parameters are named "...adapters.<block>...."
MIN_HIDDEN = 32  # the bottleneck never narrows below this width
POSITIONS = ("after", "before")  # the values of adapter.position


class AdapterHooks:
    """How an adapter joins its block: :meth:`after_block` (a forward hook) or :meth:`before_block`
    (a forward pre-hook), each applying the adapter (``self(tokens)``) to the block's tokens."""

    def after_block(self, block: nn.Module, args: tuple, output):
        """Forward hook: the block's output (a tensor, or a tuple whose first entry is the tokens,
        as some transformers versions return) with the adapter applied to the tokens."""
        if isinstance(output, tuple):
            return (self(output[0]), *output[1:])
        return self(output)

    def before_block(self, block: nn.Module, args: tuple, kwargs: dict):
        """Forward pre-hook: the block's input tokens (its first argument, or ``hidden_states``) with
        the adapter applied."""
        if args:
            return (self(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": self(kwargs["hidden_states"])}


class BlockAdapter(AdapterHooks, nn.Module):
    """tokens [..., D] (a ViT's [B, N, D], a Hiera's [B, h, w, D]) -> tokens + scale * up(GELU(down(LayerNorm(tokens)))).

    Float32 whatever the trunk stores: it computes on a float32 copy of the tokens and returns the
    sum in the tokens' own dtype, so bf16-stored frozen blocks keep reading bf16.
    """

    def __init__(self, dim: int, reduction: int = 4, init_scale: float = 1e-3) -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"adapter reduction {reduction} must be >= 1")
        hidden = max(dim // reduction, MIN_HIDDEN)
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(hidden, dim, bias=False)
        nn.init.zeros_(self.up.weight)
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.scale.dtype)
        return (h + self.scale * self.up(F.gelu(self.down(self.norm(h))))).to(x.dtype)


class MLPAdapter(AdapterHooks, nn.Module):
    """tokens [..., D] -> tokens + GELU(up(GELU(down(tokens)))), ``down`` to ``max(D // reduction, 32)``
    (SAM2-UNeXT's 32), both with bias; weights truncated normal (std 0.02), biases zero. Float32 like
    :class:`BlockAdapter`."""

    def __init__(self, dim: int, reduction: int = 4, init_scale: float = 1e-3) -> None:
        super().__init__()  # init_scale: unused (no scale), the signature of every form
        if reduction < 1:
            raise ValueError(f"adapter reduction {reduction} must be >= 1")
        hidden = max(dim // reduction, MIN_HIDDEN)
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        for layer in (self.down, self.up):
            nn.init.trunc_normal_(layer.weight, std=0.02)  # cut at +-2 (absolute), as timm's trunc_normal_
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.down.weight.dtype)
        return (h + F.gelu(self.up(F.gelu(self.down(h))))).to(x.dtype)


FORMS = {"bottleneck": BlockAdapter, "mlp": MLPAdapter}  # the values of adapter.form


def resolve_blocks(blocks: Sequence[int] | str, depth: int, usable: int | None = None) -> list[int]:
    """0-based block indices from ``blocks`` (indices, or ``"all"``), sorted and distinct.

    ``usable``: how many leading blocks feed a tapped output (default: all ``depth``); ``"all"``
    means those, and an index past them is refused, as its adapter would get no gradient (which
    DistributedDataParallel rejects). Raises ValueError naming the valid range.
    """
    usable = depth if usable is None else usable
    if isinstance(blocks, str):
        if blocks != "all":
            raise ValueError(f"adapter blocks '{blocks}': give a list of block indices or 'all'")
        return list(range(usable))
    chosen = sorted({int(b) for b in blocks})
    outside = [b for b in chosen if not 0 <= b < depth]
    if outside:
        raise ValueError(
            f"adapter blocks {outside} are not blocks of this {depth}-block trunk: "
            f"valid indices are 0..{depth - 1} (0-based, unlike model.encoder.layers, which counts from 1)"
        )
    unused = [b for b in chosen if b >= usable]
    if unused:
        raise ValueError(
            f"adapter blocks {unused} come after the last tapped block (0-based {usable - 1}, "
            f"model.encoder.layers counts it as {usable}): their adapters would never get a gradient; "
            f"use indices 0..{usable - 1}"
        )
    return chosen


def add_adapters(
    trunk: Trunk,
    blocks: Sequence[int] | str,
    reduction: int = 4,
    init_scale: float = 1e-3,
    usable: int | None = None,
    position: str = "after",
    form: str = "bottleneck",
) -> list[nn.Parameter]:
    """Attach an adapter of ``form`` (:data:`FORMS`) after (or, ``position="before"``, in front of)
    each block in ``blocks`` (see :func:`resolve_blocks`) of a ViT or Hiera ``trunk``; returns the
    new, trainable, float32 parameters (none for an empty list).

    ``blocks`` count from 0 (block 0 is the first), unlike the tapped ``layers`` of
    :class:`~dinov3_encoder.PyramidEncoder`, which count from 1: adapters on blocks 0..n-1 feed a
    tap at layer n. Call it after freezing the trunk (the adapters train whatever the trunk does).
    Raises ValueError for a ConvNeXt trunk (its stages hold maps, not tokens), for an index outside
    the trunk, an unknown position or form, or when the trunk already has adapters.
    """
    check_adapter_family(trunk.family, blocks)
    if position not in POSITIONS or form not in FORMS:
        raise ValueError(f"adapter position '{position}' / form '{form}': use {POSITIONS} / {tuple(FORMS)}")
    if hasattr(trunk, ADAPTERS_ATTR):
        raise ValueError("this trunk already has adapters")
    chosen = resolve_blocks(blocks, trunk.depth, usable)
    if not chosen:
        return []
    # A block's output width is its tap's; its input width is the previous block's output (block 0's
    # input has the first stage's width). A ViT's are all D; a Hiera's grow per stage.
    taps = [i + 1 for i in chosen] if position == "after" else [max(i, 1) for i in chosen]
    widths = trunk.tap_shapes(taps)[0]
    adapters = nn.ModuleDict({str(i): FORMS[form](w, reduction, init_scale) for i, w in zip(chosen, widths)})
    trunk.add_module(ADAPTERS_ATTR, adapters)
    for i in chosen:
        if position == "after":
            trunk.blocks[i].register_forward_hook(adapters[str(i)].after_block, prepend=True)
        else:
            trunk.blocks[i].register_forward_pre_hook(adapters[str(i)].before_block, prepend=True, with_kwargs=True)
    return list(adapters.parameters())


def adapter_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters anywhere inside ``module`` (empty without adapters)."""
    return [p for n, p in module.named_parameters() if is_adapter(n)]


def is_adapter(name: str) -> bool:
    """Whether a parameter or state-dict name belongs to a block adapter."""
    return f".{ADAPTERS_ATTR}." in f".{name}"
