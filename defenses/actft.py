"""actFT: fine-tuning with the actual trigger (backdoor knowledge required).

Row "actFT [9]" of the supplement's Table 7. Qiao, Yang and Li, "Defending Neural Backdoors via
Generative Distribution Modeling" (NeurIPS 2019) retrain the model on clean data plus copies
stamped with (generated) triggers and their *true* labels; training with the *actual* trigger is
their oracle, which is what this baseline is. The training set is D_U ∪ {(attack(x), y) : (x, y)
∈ D_U}, i.e. 2n samples (``copies`` stamped copies of each sample in general).

Optimisation defaults are the same as basicFT's (the fine-tuning step of NAD, Li et al. 2021:
10 epochs, lr 0.01, SGD momentum 0.9, weight decay 1e-4, batch size 64), so the two rows differ
only in the trigger-stamped copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import bdtool
from bdtool.core.compute.training_defense import TrainingDefense
from bdtool.core.interfaces import Attack, Defense, DefenseContext
from bdtool.core.params import param
from bdtool.core.tensors import LabeledTensors
from bdtool.defenses._trigger import stamp
from bdtool.defenses.basicft import FineTuneParams


@dataclass
class ActFTParams(FineTuneParams):
    """basicFT's optimisation plus ``copies`` trigger-stamped copies of D_U with true labels."""

    copies: int = param(1, ge=1)


def with_stamped_copies(data: LabeledTensors, attack: Attack, copies: int, owner: str) -> LabeledTensors:
    """D_U followed by ``copies`` copies of D_U with the trigger stamped, keeping the true labels."""
    stamped = stamp(attack, data.x, owner)
    xs = [data.x] + [stamped] * copies
    ys = [data.y] * (copies + 1)
    return LabeledTensors(torch.cat(xs), torch.cat(ys))


class ActualTriggerFineTuning(TrainingDefense):
    """Fine-tune on D_U plus D_U stamped with the known trigger, labelled with the true classes."""

    name = "actft"
    label = "actFT"
    description = "fine-tune on D_U + trigger-stamped D_U with true labels (Qiao et al. 2019 oracle; BDK)"
    requires_trigger = True
    accepts_trigger = True
    Params = ActFTParams

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        assert ctx.attack is not None  # Defense.defend refuses to run without it
        data = with_stamped_copies(ctx.unlearn, ctx.attack, self.params.copies, self.name)
        self.fine_tune(model, ctx, self.params.train_config(), data=data, label="actFT fine-tuning")
        return model


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(ActualTriggerFineTuning)
