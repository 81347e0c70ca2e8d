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
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.x[idx], self.y[idx]
