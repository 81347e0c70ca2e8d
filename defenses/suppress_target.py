"""``suppress-target``: the null reference row. It removes the target class from the model's
outputs and does nothing else (docs/method.md, "Honest scoring").

A model that never predicts the target class has ASR 0 by construction and loses only the
target class's clean accuracy, so on the paper's Score it looks like a strong defense (digits:
Score ≈ 89.9). Every comparison shows this row just below "Before": a defense that does not beat
it has not shown that it removed the backdoor rather than the class.

The edit: the classifier (the last Linear layer with one output per class) gets its target row of
weights set to 0 and its target bias to ``bias`` (default −1e4), so the target logit is far below
every other logit for any input. Needs the target label (threat model ``target``); never the trigger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import bdtool
from bdtool.core.errors import DefenseInputError
from bdtool.core.interfaces import Defense, DefenseContext
from bdtool.core.params import param


@dataclass
class SuppressTargetParams:
    bias: float = param(-1e4, lt=0)
    """The target logit's bias after the edit (its weights are 0)."""


def output_layer(model: nn.Module, num_classes: int) -> nn.Linear:
    """The last Linear layer with ``num_classes`` outputs and a bias."""
    for module in reversed(list(model.modules())):
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            if module.bias is None:
                raise DefenseInputError("suppress-target: the classifier has no bias to suppress the target with")
            return module
    raise DefenseInputError(f"suppress-target: no Linear layer with {num_classes} outputs in the model")


class SuppressTarget(Defense):
    """Never predict the target class; nothing else (the null reference row)."""

    name = "suppress-target"
    label = "Null: suppress target"
    description = "reference row: removes the target class from the outputs and nothing else (needs the target label)"
    requires_target_label = True
    accepts_target_label = True
    Params = SuppressTargetParams
    row_order = -10

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        assert ctx.target_class is not None  # Defense.defend refuses to run without it
        layer = output_layer(model, ctx.num_classes)
        with torch.no_grad():
            layer.weight[ctx.target_class].zero_()
            layer.bias[ctx.target_class] = self.params.bias
        return model.eval()


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(SuppressTarget)
