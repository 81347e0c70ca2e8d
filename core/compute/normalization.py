"""A model trained behind ``Normalize(mean, std)``: ``--normalize MEAN,STD`` (docs/own-models.md).

bdtool keeps every image in pixel space [0, 1]: attacks stamp their triggers there, defenses
optimise perturbations there and the evaluation measures there. A model that was trained on
``(x - mean) / std`` gets that step as a forward pre-hook on the model itself, so its state dict,
its module names (what the defenses look up) and the file a defense writes are exactly the
user's; only its input is normalised on the way in.

Presets are the per-channel statistics the field uses: ``imagenet`` (torchvision's models),
``cifar10`` (BackdoorBench's CIFAR-10 values), ``mnist`` and ``fashion-mnist`` (one channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``mean`` and ``std`` (one value each, or one per channel)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def describe(self) -> str:
        return f"mean {','.join(f'{v:g}' for v in self.mean)} std {','.join(f'{v:g}' for v in self.std)}"

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


def parse_normalization(text: str, channels: int | None = None) -> Normalization:
    """``imagenet`` (a preset), ``MEAN,STD`` (one value each), ``M1,M2,M3,S1,S2,S3`` (the first
    half the means, the second the stds) or ``M1,M2,M3/S1,S2,S3``. With ``channels``, the count
    must be 1 or that many. Raises ValueError with what is wrong and the forms accepted."""
    text = text.strip()
    accepted = f"a preset ({', '.join(PRESETS)}), MEAN,STD, or per channel M1,M2,M3,S1,S2,S3 or M1,M2,M3/S1,S2,S3"
    if text.lower() in PRESETS:
        mean, std = PRESETS[text.lower()]
    else:
        if "/" in text:
            left, _, right = text.partition("/")
            parts_mean, parts_std = left.split(","), right.split(",")
        else:
            parts = text.split(",")
            if len(parts) % 2:
                raise ValueError(f"'{text}' holds {len(parts)} value(s); give {accepted}")
            parts_mean, parts_std = parts[: len(parts) // 2], parts[len(parts) // 2:]
        try:
            mean = tuple(float(p) for p in parts_mean)
            std = tuple(float(p) for p in parts_std)
        except ValueError:
            raise ValueError(f"'{text}' is not numbers; give {accepted}") from None
        if not mean or len(mean) != len(std):
            raise ValueError(f"'{text}' gives {len(mean)} mean(s) and {len(std)} std(s); give {accepted}")
    if not all(math.isfinite(v) for v in mean + std):
        raise ValueError(f"'{text}': mean and std must be finite numbers")
    if not all(v > 0 for v in std):
        raise ValueError(f"'{text}': every std must be > 0")
    if channels is not None and len(mean) not in (1, channels):
        raise ValueError(f"'{text}' gives {len(mean)} value(s) per statistic; the images have {channels} "
                         f"channel(s): give {'1' if channels == 1 else f'1 or {channels}'}")
    return Normalization(mean, std)


class NormalizeInput:
    """A forward pre-hook: the model's input ``x`` becomes ``(x - mean) / std``. Picklable and
    device-agnostic (the statistics follow the input's device and dtype)."""

    def __init__(self, normalization: Normalization) -> None:
        self.normalization = normalization
        self.mean = torch.tensor(normalization.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(normalization.std).view(1, -1, 1, 1)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        return ((x - mean) / std, *rest)


def normalize_inputs(model: nn.Module, normalization: Normalization) -> nn.Module:
    """``model`` with its inputs normalised (in place; returned for chaining). The hook survives
    ``copy.deepcopy`` (every defense works on a copy) and leaves the state dict untouched."""
    model.register_forward_pre_hook(NormalizeInput(normalization))
    return model


def input_normalization(model: nn.Module) -> Normalization | None:
    """The normalisation ``normalize_inputs`` put on ``model``, or None."""
    for hook in model._forward_pre_hooks.values():
        if isinstance(hook, NormalizeInput):
            return hook.normalization
    return None

