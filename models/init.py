"""The published E2Net's weight initialisation (y3none/E2Net, ``initialize()`` of CAEM, LFSM, CFZM
and CCM), applied by layer type to the trainable modules after the encoder.

The published rules, per layer type:

- convolution: He normal for ReLU with ``mode="fan_out"`` (std sqrt(2 / (C_out k^2))), bias 0;
- squeeze-excitation layers (CAEM's channel attention): N(0, 0.01), bias 0;
- linear layers (LFSM's transformer block): Xavier uniform, bias 0. Its query/key/value
  projections were one ``nn.MultiheadAttention`` in-projection of shape [3C, C], Xavier-initialised
  as a whole, so ours (``q`` [C, C] and ``kv`` [2C, C]) share that matrix's bound sqrt(6 / 4C);
- batch, group and layer norms: weight 1, bias 0 (PyTorch's own default).

The published code never reset the biases of LFSM's and CFZM's convolutions: they keep PyTorch's
default (uniform in +-1/sqrt(fan_in)); pass those modules as ``keep_conv_bias``. The encoder (and
its pyramid) is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import nn
from torchvision.ops import SqueezeExcitation

from models.blocks import Attention

SE_STD = 0.01  # the published N(0, 0.01) on the channel-attention layers


def _zero_bias(m: nn.Module) -> None:
    if getattr(m, "bias", None) is not None:
        nn.init.zeros_(m.bias)


def _conv(m: nn.Conv2d, keep_bias: bool) -> None:
    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if not keep_bias:
        _zero_bias(m)


def _attention(m: Attention) -> None:
    """q and kv as slices of one Xavier-uniform [3C, C] in-projection; the output projection alone."""
    c = m.q.in_features
    bound = math.sqrt(6.0 / (c + 3 * c))
    for proj in (m.q, m.kv):
        nn.init.uniform_(proj.weight, -bound, bound)
        _zero_bias(proj)
    nn.init.xavier_uniform_(m.proj.weight)
    _zero_bias(m.proj)


def published_init_(modules: Iterable[nn.Module], keep_conv_bias: Iterable[nn.Module] = ()) -> None:
    """Re-initialise every layer inside ``modules`` (e.g. CAEM and the decoder) in place by the
    published rules above. Convolutions inside ``keep_conv_bias`` keep their bias as constructed."""
    kept = {id(m) for owner in keep_conv_bias for m in owner.modules()}
    done: set[int] = set()
    for root in modules:
        for m in root.modules():
            if id(m) in done:
                continue
            if isinstance(m, SqueezeExcitation):
                for fc in (m.fc1, m.fc2):
                    nn.init.normal_(fc.weight, 0.0, SE_STD)
                    _zero_bias(fc)
                    done.add(id(fc))
            elif isinstance(m, Attention):
                _attention(m)
                done.update(id(p) for p in (m.q, m.kv, m.proj))
            elif isinstance(m, nn.Conv2d):
                _conv(m, keep_bias=id(m) in kept)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                _zero_bias(m)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            done.add(id(m))
