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
from bdtool.core.interfaces import Defense, DefenseContext
from bdtool.core.compute.training import TrainConfig, train_supervised
from bdtool.defenses._finetune import check_finite, epoch_logger


@dataclass
class FineTuneParams:
    """Plain SGD fine-tuning (defaults: NAD's fine-tuning step, Li et al. 2021)."""

    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 64
    schedule: Literal["constant", "cosine"] = "constant"

    def validate(self) -> None:
        self.train_config().validate()

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, batch_size=self.batch_size,
                           schedule=self.schedule)


class BasicFineTuning(Defense):
    """Fine-tune all layers on clean D_U (SGD, momentum 0.9); needs no backdoor knowledge."""

    name = "basicft"
    label = "basicFT"
    description = "fine-tune every layer on clean D_U (SGD momentum 0.9; NAD's fine-tuning defaults)"
    requires_trigger = False
    accepts_trigger = False
    Params = FineTuneParams

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        config = self.params.train_config()
        train_supervised(model, ctx.unlearn, config, ctx.device, ctx.seed, ctx.progress,
                         epoch_logger(ctx, "basicft.loss"), label="basicFT fine-tuning")
        check_finite(model, self.name)
        return model.eval()


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(BasicFineTuning)
