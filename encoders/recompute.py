"""Activation checkpointing for a trunk that trains: its blocks recompute their activations in backward.

Adapters after every block make autograd keep every block's activations, frozen or not, for the
gradient that flows back to the first adapter (at 1024 px, a Hiera-L training step then holds 4-5x
the memory of an inference pass). With checkpointing each block keeps only its input and runs again
in the backward pass: one more forward pass of the trunk per step for a fraction of its memory.

The unit recomputed is the block's whole call, its forward hooks included, so the block adapters
(:mod:`encoders.adapters`, forward hooks on the block) and LoRA (layers inside the block) are
recomputed with it and none of their activations are kept either:

- timm: the family's own ``set_grad_checkpointing``; its ``forward_intermediates`` and
  ``forward_features`` then call each block module through ``torch.utils.checkpoint``.
- transformers: its own mechanism (``gradient_checkpointing_enable``) does not fit: it checkpoints
  a layer's ``forward`` (hooks stay outside, so the adapters' activations would be kept) and only in
  training mode, while a trunk always runs in eval mode (:mod:`dinov3_encoder`). Each block's class
  becomes a subclass whose ``__call__`` runs the block through ``torch.utils.checkpoint``, as
  ``torch.nn.utils.parametrize`` swaps a module's class: names, state-dict keys and ``isinstance``
  stay as they were.

Both use the non-reentrant checkpoint: it replays autocast and the RNG state (LoRA's dropout draws
the same mask again), works under DistributedDataParallel without ``find_unused_parameters`` and with
``static_graph``, and gives the gradients of the plain forward. Without grad mode (validation,
inference, a frozen trunk under ``no_grad``) a block runs as it would without checkpointing.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from encoders.trunks import Trunk


def recompute_blocks(trunk: Trunk) -> None:
    """Make every block of ``trunk`` recompute its activations, hooks included, in the backward pass."""
    if hasattr(trunk.model, "set_grad_checkpointing"):  # timm
        trunk.model.set_grad_checkpointing(True)
        return
    for block in trunk.blocks:
        if not getattr(block, "recomputes_in_backward", False):
            block.__class__ = _recomputing(type(block))


@functools.cache
def _recomputing(cls: type[nn.Module]) -> type[nn.Module]:
    """The subclass of ``cls`` whose call (pre-hooks, forward, hooks) is checkpointed in grad mode."""

    def __call__(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return cls.__call__(self, *args, **kwargs)
        return checkpoint(cls.__call__, self, *args, use_reentrant=False, **kwargs)

    attrs = {"__call__": __call__, "recomputes_in_backward": True, "__module__": cls.__module__}
    return type(f"Checkpointed{cls.__name__}", (cls,), attrs)
