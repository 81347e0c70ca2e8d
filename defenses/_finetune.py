"""Shared pieces of the fine-tuning baselines (basicFT, actFT, NAD, BaEraser, Retraining).

Kept small on purpose: the SGD loop itself is :func:`bdtool.core.training.train_supervised`
wherever a plain cross-entropy loop fits; the helpers here only adapt a defense's params and
context to it, and provide the seeded batching used by the custom loops (NAD, BaEraser).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn

from bdtool.core.errors import DefenseInputError
from bdtool.core.interfaces import Attack, DefenseContext
from bdtool.core.tensors import LabeledTensors
from bdtool.core.training import EpochHook


def safe_batch_size(n: int, batch_size: int) -> int:
    """``batch_size`` capped at ``n`` and nudged so that no batch holds a single sample.

    A one-sample batch breaks BatchNorm layers in training mode that have no spatial extent
    (BatchNorm1d); with n=5 and batch size 64 the whole set is one batch of 5.
    """
    b = max(1, min(batch_size, n))
    while n > 1 and b < n and n % b == 1:
        b += 1
    return b


def seeded_batches(data: LabeledTensors, batch_size: int, generator: torch.Generator,
                   device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """One shuffled epoch of ``data`` in batches of :func:`safe_batch_size`, moved to ``device``."""
    for xb, yb in data.batches(safe_batch_size(len(data), batch_size), shuffle=True, generator=generator):
        yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)


def epoch_logger(ctx: DefenseContext, key: str) -> EpochHook:
    """An ``on_epoch`` hook that logs the mean training loss as ``key`` (step = epoch)."""

    def on_epoch(epoch: int, loss: float) -> None:
        ctx.log_metric(key, float(loss), epoch)

    return on_epoch


def stamp(attack: Attack, x: Tensor, owner: str) -> Tensor:
    """``attack.apply(x)``, turning an attack that cannot stamp these images into a clear error."""
    try:
        return attack.apply(x)
    except ValueError as exc:
        raise DefenseInputError(f"{owner}: the attack cannot stamp the unlearning images: {exc}") from None


def set_batchnorm_eval(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode (running statistics frozen) after ``model.train()``."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def check_finite(model: nn.Module, owner: str) -> None:
    """Refuse to return a model with NaN/inf weights (a diverged run) — say so instead."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FloatingPointError(f"{owner}: training diverged ({name} holds NaN/inf); lower the learning rate")
