"""Supervised SGD training, used for victims and for retraining (DESIGN.md §5, §6)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bdtool.core.interfaces import ProgressFn, _no_progress
from bdtool.core.tensors import LabeledTensors


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: str = "cosine"
    """'cosine' annealing to 0 over all steps, or 'constant'."""

    def validate(self) -> None:
        check_sgd(epochs=self.epochs, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                  batch_size=self.batch_size)
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant, got {self.schedule!r}")


def check_sgd(epochs: int | None = None, lr: float | None = None, momentum: float | None = None,
              weight_decay: float | None = None, batch_size: int | None = None) -> None:
    """ValueError for an SGD hyper-parameter out of range; ``None`` means "not given"."""
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr}")
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if weight_decay is not None and weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


EpochHook = Callable[[int, float], None]
"""on_epoch(epoch (1-based), mean training loss)."""


def train_supervised(
    model: nn.Module,
    data: LabeledTensors,
    config: TrainConfig,
    device: torch.device,
    seed: int,
    progress: ProgressFn = _no_progress,
    on_epoch: EpochHook | None = None,
    label: str = "train",
) -> nn.Module:
    """Train ``model`` in place with SGD + momentum and cross-entropy; seeded shuffling."""
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    steps_per_epoch = max(1, -(-len(data) // config.batch_size))
    scheduler = None
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, config.epochs + 1):
        total, count = 0.0, 0
        for xb, yb in data.batches(config.batch_size, shuffle=True, generator=gen, min_last=2):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(yb)
            count += len(yb)
        mean_loss = total / max(count, 1)
        progress(label, epoch, config.epochs)
        if on_epoch is not None:
            on_epoch(epoch, mean_loss)
    model.eval()
    return model
