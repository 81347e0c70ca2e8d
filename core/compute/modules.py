"""Model inspection helpers shared by the training loop and the defenses: train/eval mode
bookkeeping, BatchNorm detection, the finiteness check of a trained model and forward-hook
capture of intermediate outputs (docs/architecture.md, "Layers")."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from bdtool.core.interfaces import non_finite_tensor

BATCHNORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm,)
"""Every BatchNorm flavour (1d/2d/3d, SyncBatchNorm, the lazy ones): their common base class."""


def is_batchnorm(module: nn.Module) -> bool:
    """True for a BatchNorm layer (a module with running statistics updated in train mode)."""
    return isinstance(module, BATCHNORM_TYPES)


def set_batchnorm_mode(model: nn.Module, training: bool) -> None:
    """Put every BatchNorm layer of ``model`` in train (statistics move) or eval (frozen) mode,
    leaving every other module's mode as it is."""
    for module in model.modules():
        if is_batchnorm(module):
            module.train(training)


@contextmanager
def preserve_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore the train/eval flag of every module of ``model`` on exit, mixed modes included
    (``model.train(was_training)`` would flatten e.g. frozen BatchNorm layers in a training model)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with every parameter's ``requires_grad`` off, both restored on exit:
    for optimising something other than the weights through the model (a trigger, a mask)."""
    requires = [prm.requires_grad for prm in model.parameters()]
    for prm in model.parameters():
        prm.requires_grad_(False)
    try:
        with preserve_modes(model):
            model.eval()
            yield model
    finally:
        for prm, flag in zip(model.parameters(), requires):
            prm.requires_grad_(flag)


def check_finite(model: nn.Module, owner: str) -> None:
    """Refuse to return a model with NaN/inf weights (a diverged run) — say so instead."""
    name = non_finite_tensor(model)
    if name is not None:
        raise FloatingPointError(f"{owner}: training diverged ({name} holds NaN/inf); lower the learning rate")


class ForwardCapture:
    """Forward hooks that keep the output of each named module of ``model``.

    ``outputs[name]`` is the latest output (``first_only=True``: the first one, for a module called
    more than once per forward); ``outputs`` lists the modules in the order they first ran. Use as a
    context manager, or call :meth:`close` to remove the hooks.
    """

    def __init__(self, model: nn.Module, names: list[str], first_only: bool = False) -> None:
        modules = dict(model.named_modules())
        self.first_only = first_only
        self.outputs: dict[str, Tensor] = {}
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in names]

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            if not (self.first_only and name in self.outputs):
                self.outputs[name] = output
        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def __enter__(self) -> "ForwardCapture":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
