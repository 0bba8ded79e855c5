"""AdamW over the trainable parameters; the warm-up + cosine schedule (per iteration, or held for
each epoch), or ReduceLROnPlateau on the validation loss."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from encoders.adapters import is_adapter
from encoders.lora import is_lora


def _no_decay(name: str, p: nn.Parameter) -> bool:
    """Biases, norm scales and learned tokens/embeddings: decaying them toward 0 only hurts."""
    return p.ndim <= 1 or name.endswith(("token", "tokens", "pos_embed", "embeddings.mask_token"))


def param_groups(
    model: nn.Module,
    weight_decay: float,
    encoder_lr_scale: float,
    pretrained: Iterable[nn.Parameter] = (),
    decay_norms: bool = False,
) -> list[dict]:
    """Trainable parameters split by (pretrained, LoRA, adapter or new) x (decayed or not); empty groups
    dropped. ``decay_norms``: biases, norm scales and tokens are decayed too (the reference E2Net's AdamW).

    ``pretrained``: the parameters of the pretrained trunk (fine-tuned blocks and, named ``lora_``, the
    LoRA adapters injected into it); they get ``lr * encoder_lr_scale`` so fine-tuning does not wash
    out what pre-training learned, while new layers (pyramid, CAEM, decoder) train at the full rate.
    Block adapters (named ``.adapters.``) sit in the trunk but are new layers beside it, starting as a
    no-op with a 1e-3 output scale: they train at the full rate too, as E2Net-DINOv2 trains them.
    Each group carries ``name`` (e.g. "lora/decay", "adapter/no_decay") and ``lr_scale``.
    """
    pretrained_ids = {id(p) for p in pretrained}
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_adapter(name):
            part = "adapter"
        else:
            part = "new" if id(p) not in pretrained_ids else "lora" if is_lora(name) else "pretrained"
        decay = "no_decay" if _no_decay(name, p) and not decay_norms else "decay"
        key = f"{part}/{decay}"
        if key not in groups:
            groups[key] = {
                "name": key,
                "params": [],
                "weight_decay": 0.0 if decay == "no_decay" else weight_decay,
                "lr_scale": 1.0 if part in ("new", "adapter") else encoder_lr_scale,
            }
        groups[key]["params"].append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters (is everything frozen?)")
    return list(groups.values())


def lr_label(group: dict) -> str:
    """The scalar a param group's lr is logged as: ``lr`` for the new layers and the block adapters
    (both at the full rate), ``lr_pretrained`` for the trunk's fine-tuned blocks and LoRA (groups
    are named ``<part>/<decay>``, see :func:`param_groups`)."""
    return "lr" if group["name"].split("/")[0] in ("new", "adapter") else "lr_pretrained"


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: Sequence[float] = (0.9, 0.999),
    encoder_lr_scale: float = 0.1,
    pretrained: Iterable[nn.Parameter] = (),
    fused: bool = False,
    decay_norms: bool = False,
) -> torch.optim.AdamW:
    """AdamW over trainable parameters only (see :func:`param_groups`); ``fused``: one kernel per step."""
    groups = param_groups(model, weight_decay, encoder_lr_scale, pretrained, decay_norms)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused or None)


def optimizer_for(model: nn.Module, train_cfg, device: torch.device) -> torch.optim.AdamW:
    """The optimizer of ``train:`` settings (lr, weight_decay, betas, encoder_lr_scale, fused_adamw,
    decay_norms) for an ``E2Net``: its encoder's trunk (fine-tuned blocks, LoRA) learns at ``encoder_lr_scale``."""
    t = train_cfg
    return build_optimizer(
        model,
        t.lr,
        t.weight_decay,
        t.betas,
        t.encoder_lr_scale,
        model.encoder.pretrained_parameters(),
        fused=t.fused_adamw and device.type == "cuda",
        decay_norms=t.decay_norms,
    )


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """LR multiplier: linear from ~0 to 1 over ``warmup_steps``, then cosine down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float, steps_per_unit: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step (not per epoch), so warm-up is smooth at any epoch length.

    ``steps_per_unit`` > 1 (an epoch's optimizer steps) holds each rate for that many steps, and
    ``total_steps`` / ``warmup_steps`` count those units: torch's ``CosineAnnealingLR`` stepped per
    epoch, with ``eta_min = lr * min_ratio`` (``train.scheduler=cosine_epoch``).
    """

    def factor(step: int) -> float:
        return warmup_cosine(step // steps_per_unit, total_steps, warmup_steps, min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_plateau_scheduler(
    optimizer: torch.optim.Optimizer, factor: float, patience: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Multiply every group's lr by ``factor`` after ``patience`` validations without a lower
    validation loss, down to ``min_lr_ratio`` of its starting lr; stepped with the loss after each
    validation (never per iteration). Its state dict holds the best loss and the bad-epoch count."""
    min_lrs = [g["lr"] * min_lr_ratio for g in optimizer.param_groups]
    for g in (
        optimizer.param_groups
    ):  # the base rate, as other schedulers record it: resuming compares it, not the lowered lr
        g.setdefault("initial_lr", g["lr"])
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=factor, patience=patience, min_lr=min_lrs
    )


def steps_per_iteration(scheduler) -> bool:
    """Whether ``scheduler`` steps after each optimizer step (cosine) rather than after each validation (plateau)."""
    return not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
