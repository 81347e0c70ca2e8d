"""The one SGD training loop of bdtool and its hyper-parameters (docs/architecture.md, "Training
defenses"): victims, retraining, every fine-tuning defense and the repair train through
:func:`train_loop`; NAD and BaEraser plug in their loss, a per-step hook and a stop condition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Literal

import torch
from torch import Tensor, nn

from bdtool.core import interrupts
from bdtool.core.callbacks import MetricLogFn, ProgressFn, _no_progress
from bdtool.core.params import declared_range, param
from bdtool.core.tensors import LabeledTensors

__all__ = [
    "SGDParams", "TrainConfig", "check_sgd", "LoopState", "StepLoss", "cross_entropy_loss", "train_loop",
    "train_supervised", "metric_logger",
]


@dataclass
class SGDParams:
    """The SGD hyper-parameters, declared once. A training defense's ``Params`` dataclass inherits
    them and re-declares only the defaults it changes (each citing its source); the values below
    are bdtool's victim-training defaults (a victim recipe is a plain ``SGDParams``, see
    ``TrainConfig``).

    Exactly these six fields: a victim's cache key hashes ``asdict`` of its recipe.
    """

    epochs: int = param(10, ge=1)
    lr: float = param(0.05, gt=0)
    momentum: float = param(0.9, ge=0, lt=1)
    weight_decay: float = param(5e-4, ge=0)
    batch_size: int = param(128, ge=1)
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    """'cosine': annealed to 0 over all steps; 'constant'; 'step': divided by 10 after
    ``lr_drop_epoch`` epochs (only where the params declare ``lr_drop_epoch``: NAD)."""

    schedules: ClassVar[tuple[str, ...]] = ("cosine", "constant")
    """The schedules these params accept (NAD adds 'step')."""

    def validate(self) -> None:
        if self.schedule not in self.schedules:
            raise ValueError(f"schedule must be {' or '.join(self.schedules)}, got {self.schedule!r}")

    def train_config(self) -> "SGDParams":
        """Only the SGD hyper-parameters (a plain :class:`SGDParams`), without a subclass's fields."""
        return SGDParams(**{f.name: getattr(self, f.name) for f in fields(SGDParams)})


TrainConfig = SGDParams
"""The name victims' training recipes use (``DatasetSource.victim_recipe``, core/experiment/victim_spec.py); the same class."""


def check_sgd(epochs: int | None = None, lr: float | None = None, momentum: float | None = None,
              weight_decay: float | None = None, batch_size: int | None = None) -> None:
    """ValueError for an SGD hyper-parameter outside the range :class:`SGDParams` declares for it;
    ``None`` means "not given". Kept for plugins (``bdtool.api``): a params dataclass declares its
    ranges with ``param`` instead, and ``build_params`` checks them."""
    given = dict(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size)
    for name, value in given.items():
        bounds = declared_range(SGDParams, name)
        if value is not None and bounds is not None and not (math.isfinite(value) and bounds.holds(value)):
            raise ValueError(f"{name} must be {bounds.describe()}, got {value}")


@dataclass
class LoopState:
    """Where :func:`train_loop` stands; handed to the stop condition and returned at the end."""

    epoch: int = 0
    """The current epoch (1-based; 0 before the first one)."""
    step: int = 0
    """Optimisation steps taken so far."""
    epoch_end: bool = True
    """True when asked at the end of an epoch (or before the first step: the end of "epoch 0")."""
    epochs_run: int = 0
    stopped: bool = False
    """True when the stop condition ended training before ``epochs``."""


StepLoss = Callable[[nn.Module, Tensor, Tensor], "tuple[Tensor, dict[str, Tensor]]"]
"""loss(model, xb, yb) -> (loss to minimise, named terms whose per-epoch means are reported)."""

EpochHook = Callable[[int, float], None]
"""on_epoch(epoch (1-based), mean training loss) of :func:`train_supervised`."""

EpochTermsHook = Callable[[int, "dict[str, float]"], None]
"""on_epoch(epoch (1-based), per-sample mean of each loss term over the epoch)."""

StopFn = Callable[[LoopState], bool]
"""True to end training now. Asked before the first step, after every step and after every epoch."""


def cross_entropy_loss(model: nn.Module, xb: Tensor, yb: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain supervised training: cross-entropy, reported as ``loss``."""
    loss = nn.functional.cross_entropy(model(xb), yb)
    return loss, {"loss": loss}


def metric_logger(log_metric: MetricLogFn, template: str) -> EpochTermsHook:
    """An ``on_epoch`` hook logging each term's epoch mean as ``template.format(term)`` (step = epoch),
    e.g. ``"basicft.{}"`` -> ``basicft.loss``."""

    def on_epoch(epoch: int, means: dict[str, float]) -> None:
        for term, value in means.items():
            log_metric(template.format(term), float(value), epoch)

    return on_epoch


def train_loop(
    model: nn.Module,
    data: LabeledTensors,
    config: SGDParams,
    device: torch.device,
    seed: int,
    *,
    loss: StepLoss = cross_entropy_loss,
    nesterov: bool = False,
    lr_drop_epoch: int | None = None,
    before_step: Callable[[nn.Module], None] | None = None,
    stop: StopFn | None = None,
    on_epoch: EpochTermsHook | None = None,
    progress: ProgressFn = _no_progress,
    label: str = "train",
) -> LoopState:
    """Train ``model`` in place with SGD (momentum, weight decay, optional Nesterov) on seeded
    shuffled batches of ``data`` (``torch.Generator().manual_seed(seed)``; never a one-sample batch).

    - ``config.schedule``: 'cosine' (annealed to 0 over all steps, stepped per batch), 'constant',
      or 'step' (``config.lr`` for the first ``lr_drop_epoch`` epochs, then ``config.lr * 0.1``).
    - Every step runs in train mode, after ``before_step(model)`` (e.g. freezing BatchNorm).
    - ``stop`` may end training early (see :data:`StopFn`); the epoch it stops in is still
      reported (``on_epoch``, ``progress``) and the progress line is closed.
    - The model is left in eval mode.
    """
    if config.schedule == "step" and lr_drop_epoch is None:
        raise ValueError("schedule 'step' needs lr_drop_epoch")
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=nesterov and config.momentum > 0)
    scheduler = None
    if config.schedule == "cosine":
        steps_per_epoch = max(1, -(-len(data) // config.batch_size))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    state = LoopState()
    state.stopped = stop is not None and stop(state)
    while not state.stopped and state.epoch < config.epochs:
        state.epoch += 1
        state.epoch_end = False
        if config.schedule == "step":
            lr = config.lr if state.epoch <= lr_drop_epoch else config.lr * 0.1
            for group in optimizer.param_groups:
                group["lr"] = lr
        sums: dict[str, float] = {}
        count = 0
        for xb, yb in data.batches(config.batch_size, shuffle=True, generator=gen, min_last=2):
            interrupts.check()  # a signal whose raise was swallowed stops the loop here (core/interrupts.py)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            model.train()
            if before_step is not None:
                before_step(model)
            optimizer.zero_grad(set_to_none=True)
            value, terms = loss(model, xb, yb)
            value.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            for term, tensor in terms.items():
                sums[term] = sums.get(term, 0.0) + float(tensor.detach()) * len(yb)
            count += len(yb)
            state.step += 1
            if stop is not None and stop(state):
                state.stopped = True
                break
        state.epochs_run = state.epoch
        if on_epoch is not None:
            on_epoch(state.epoch, {term: total / max(count, 1) for term, total in sums.items()})
        progress(label, state.epoch, config.epochs)
        state.epoch_end = True
        if stop is not None and stop(state):
            state.stopped = True
    if state.stopped and state.epochs_run < config.epochs:  # close the progress line
        progress(label, config.epochs, config.epochs)
    model.eval()
    return state


def train_supervised(
    model: nn.Module,
    data: LabeledTensors,
    config: SGDParams,
    device: torch.device,
    seed: int,
    progress: ProgressFn = _no_progress,
    on_epoch: EpochHook | None = None,
    label: str = "train",
) -> nn.Module:
    """:func:`train_loop` with plain cross-entropy; ``on_epoch(epoch, mean loss)``; returns ``model``."""
    hook = None if on_epoch is None else (lambda epoch, means: on_epoch(epoch, means["loss"]))
    train_loop(model, data, config, device, seed, on_epoch=hook, progress=progress, label=label)
    return model
