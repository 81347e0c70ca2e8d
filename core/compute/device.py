"""Device selection, seeding and CUDA-synchronised timing."""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from bdtool.core.errors import BdtoolError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BdtoolError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise BdtoolError(f"unknown device '{name}'; use one of {', '.join(DEVICE_CHOICES)}")


def seed_everything(seed: int) -> None:
    """Same seed, same device -> same numbers (Python, NumPy and torch generators)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall time of a block, synchronised on CUDA so queued kernels are counted."""

    def __init__(self) -> None:
        self.seconds = 0.0


@contextmanager
def timed(device: torch.device) -> Iterator[Stopwatch]:
    watch = Stopwatch()
    synchronize(device)
    start = time.perf_counter()
    try:
        yield watch
    finally:
        synchronize(device)
        watch.seconds = time.perf_counter() - start
