"""Channel pruning baked into the weights, shared by Fine-Pruning (``fp``) and ANP (``anp``).

A pruned channel is made silent by zeroing parameters, never by a forward hook or a mask buffer:
the defended model must keep the victim's state-dict keys (it is logged and reloaded as a plain
state dict, where hooks are lost).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from bdtool.core.compute.modules import is_batchnorm
from bdtool.core.errors import DefenseInputError


def affine_batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every BatchNorm layer with a learnable scale and shift, in ``named_modules`` order."""
    return [(name, m) for name, m in model.named_modules()
            if is_batchnorm(m) and getattr(m, "weight", None) is not None and getattr(m, "bias", None) is not None]


def last_conv(model: nn.Module, owner: str) -> tuple[str, nn.Conv2d, nn.Module | None]:
    """The last ``Conv2d`` (in ``named_modules`` order) and the affine BatchNorm that directly
    follows it with as many channels, or None when there is none."""
    named = list(model.named_modules())
    convs = [i for i, (_, m) in enumerate(named) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise DefenseInputError(f"{owner}: the model has no Conv2d layer to prune")
    i = convs[-1]
    name, conv = named[i]
    bn = None
    if i + 1 < len(named):
        follower = named[i + 1][1]
        if (is_batchnorm(follower) and getattr(follower, "weight", None) is not None
                and follower.num_features == conv.out_channels):
            bn = follower
    return name, conv, bn  # type: ignore[return-value]


@torch.no_grad()
def silence_channels(conv: nn.Conv2d, bn: nn.Module | None, channels: Tensor | Iterable[int]) -> None:
    """Make ``channels`` of the conv (+BN) output exactly 0: the BN's scale and shift when there is
    a BN, else the conv's filters and bias. A following ReLU then outputs 0 for them too."""
    idx = torch.as_tensor(list(channels) if not isinstance(channels, Tensor) else channels, dtype=torch.long)
    if idx.numel() == 0:
        return
    layer = bn if bn is not None else conv
    idx = idx.to(layer.weight.device)
    layer.weight[idx] = 0.0
    if layer.bias is not None:
        layer.bias[idx] = 0.0
