"""basicFT: fine-tune the whole model on the clean unlearning set D_U (no backdoor knowledge).

The simplest baseline of the supplement's Table 7 (row "basicFT"): plain supervised fine-tuning
of every layer with SGD + momentum 0.9 on the n clean samples of D_U.

Defaults follow the fine-tuning step of Neural Attention Distillation (Li et al., "Neural
Attention Distillation: Erasing Backdoor Triggers from Deep Neural Networks", ICLR 2021), which
is the standard fine-tuning baseline of the backdoor literature: 10 epochs, learning rate 0.01,
SGD with momentum 0.9, weight decay 1e-4, batch size 64, constant learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from torch import nn

import bdtool
from bdtool.core.compute.training import SGDParams
from bdtool.core.compute.training_defense import TrainingDefense
from bdtool.core.interfaces import DefenseContext


@dataclass
class FineTuneParams(SGDParams):
    """Plain SGD fine-tuning. Defaults: NAD's fine-tuning step (Li et al. 2021, see the module
    docstring); momentum 0.9 is SGDParams'."""

    epochs: int = 10
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 64
    schedule: Literal["cosine", "constant", "step"] = "constant"


class BasicFineTuning(TrainingDefense):
    """Fine-tune all layers on clean D_U (SGD, momentum 0.9); needs no backdoor knowledge."""

    name = "basicft"
    label = "basicFT"
    description = "fine-tune every layer on clean D_U (SGD momentum 0.9; NAD's fine-tuning defaults)"
    requires_trigger = False
    accepts_trigger = False
    Params = FineTuneParams

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        self.fine_tune(model, ctx, self.params.train_config(), label="basicFT fine-tuning")
        return model


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(BasicFineTuning)
