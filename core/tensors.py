"""A labelled batch of images kept as two tensors (images in [0,1], NCHW; labels int64)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor


@dataclass
class LabeledTensors:
    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.x.shape[0]} images but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, index: Tensor | list[int]) -> "LabeledTensors":
        index = torch.as_tensor(index, dtype=torch.long)
        return LabeledTensors(self.x[index], self.y[index])

    def to(self, device: torch.device | str) -> "LabeledTensors":
        return LabeledTensors(self.x.to(device), self.y.to(device))

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
        min_last: int = 1,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of ``batch_size``; a trailing batch smaller than ``min_last`` is merged into the
        one before it. Training passes ``min_last=2``: a one-sample batch breaks BatchNorm layers
        in training mode that have no spatial extent (BatchNorm1d)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] < min_last:
            starts.pop()
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else n
            idx = order[start:end]
            yield self.x[idx], self.y[idx]
