"""Retraining: train a fresh model of the same architecture from scratch on the clean training
set (the training set minus the poisoned samples), with the victim's own recipe.

Row "Retraining" of the supplement's Table 7: the gold standard (no backdoor, target class kept)
and the time reference. It ignores D_U and needs no backdoor knowledge, only the training set and
the indices of the poisoned samples (``ctx.train`` is already the clean part). The model is
rebuilt by copying the victim and re-initialising every module that has ``reset_parameters()``
(BatchNorm layers also reset their running statistics), under ``torch.manual_seed(ctx.seed)``.

Defaults: the victim's recipe (``ctx.train_recipe``); each field may be overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch
from torch import nn

import bdtool
from bdtool.core.compute.modules import is_batchnorm
from bdtool.core.compute.training import SGDParams
from bdtool.core.errors import DefenseInputError
from bdtool.core.compute.training_defense import TrainingDefense
from bdtool.core.interfaces import Defense, DefenseContext
from bdtool.core.params import param


@dataclass
class RetrainParams:
    """Overrides of the victim's training recipe (None = the victim's value). Not an SGDParams:
    the defaults come from the victim (``ctx.train_recipe``), not from this declaration."""

    epochs: int | None = param(None, ge=1)
    lr: float | None = param(None, gt=0)
    batch_size: int | None = param(None, ge=1)
    schedule: Literal["cosine", "constant"] | None = None


def reinitialise(model: nn.Module, owner: str = "retrain") -> nn.Module:
    """Re-initialise every parameter and buffer of ``model`` in place (seed it before calling).

    Raises DefenseInputError when a module owns parameters but has no ``reset_parameters()``:
    such a model cannot be rebuilt from scratch without knowing its initialiser.
    """
    stuck = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif own:
            stuck.append(name or type(module).__name__)
        if is_batchnorm(module):
            module.reset_running_stats()
    if stuck:
        raise DefenseInputError(
            f"{owner}: cannot re-initialise module(s) {', '.join(stuck)}: they hold parameters but have no "
            "reset_parameters(); give them one to retrain this architecture from scratch"
        )
    return model


class Retraining(TrainingDefense):
    """Train a fresh model of the same architecture on the clean training set (victim's recipe)."""

    name = "retrain"
    label = "Retraining"
    description = "train from scratch on the training set minus the poisoned samples (victim's recipe)"
    requires_trigger = False
    accepts_trigger = False
    needs_training_set = True
    Params = RetrainParams

    def recipe(self, ctx: DefenseContext) -> SGDParams:
        base = ctx.train_recipe if ctx.train_recipe is not None else SGDParams()
        overrides = {k: v for k, v in vars(self.params).items() if v is not None}
        config = replace(base, **overrides)
        return config

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        assert ctx.train is not None  # Defense.defend refuses to run without it
        if len(ctx.train) == 0:
            raise DefenseInputError("retrain: the clean training set is empty")
        config = self.recipe(ctx)
        torch.manual_seed(ctx.seed)
        fresh = reinitialise(model, self.name).to(ctx.device)
        self.fine_tune(fresh, ctx, config, data=ctx.train, label="Retraining from scratch")
        return fresh


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(Retraining)
