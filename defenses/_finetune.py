"""Shared pieces of the fine-tuning baselines (basicFT, actFT, NAD, BaEraser, Retraining).

Kept small on purpose: the SGD loop itself is :func:`bdtool.core.compute.training.train_supervised`
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
from bdtool.core.compute.training import EpochHook


def seeded_batches(data: LabeledTensors, batch_size: int, generator: torch.Generator,
                   device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """One shuffled epoch of ``data``, moved to ``device``; never a one-sample batch."""
    for xb, yb in data.batches(batch_size, shuffle=True, generator=generator, min_last=2):
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
