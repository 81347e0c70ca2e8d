"""The repair step: one epoch of fine-tuning on the clean unlearning set D_U (supplement §B.2).

The supplement repairs an edited model by fine-tuning it for one epoch on D_U only ("We are
limited to finetune only on unseen unlearn data", §B.2) and studies the learning rate η
(Table 8: η = 1e-2 "was the most effective when aiming for a decent CTCA and a low ASR").
The optimiser (SGD, momentum 0.9), the batch size min(n, 64), the constant schedule and the weight
decay are our reconstruction (DESIGN.md §2, docs/method.md "Repair").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

import bdtool
from bdtool.core.interfaces import DefenseContext, Repair
from bdtool.core.compute.training import TrainConfig, check_sgd, train_supervised


@dataclass
class FinetuneRepairParams:
    lr: float = 1e-2
    """η (supplement Table 8: best 1e-2)."""
    epochs: int = 1
    """One epoch in the supplement (§B.2)."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    """bdtool's training default (core/training.py) *[reconstruction]*."""
    max_batch_size: int = 64
    """Batch size = min(n, max_batch_size)."""

    def validate(self) -> None:
        check_sgd(epochs=self.epochs, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")


class FinetuneRepair(Repair):
    """Fine-tune the (edited) model on the clean D_U: SGD with momentum, constant η, seeded by
    ``ctx.seed``. BN layers train during the epoch, as in any fine-tuning."""

    name = "finetune"
    is_default = True
    description = "one epoch of SGD (momentum 0.9) on the clean D_U, learning rate lr (paper's repair, Table 8)"
    Params = FinetuneRepairParams

    def config(self, n: int) -> TrainConfig:
        p: FinetuneRepairParams = self.params
        return TrainConfig(epochs=p.epochs, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay,
                           batch_size=max(1, min(n, p.max_batch_size)), schedule="constant")

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        from bdtool.core.errors import DefenseInputError

        if len(ctx.unlearn) == 0:
            raise DefenseInputError("repair 'finetune' needs at least one unlearning sample")
        return train_supervised(model, ctx.unlearn, self.config(len(ctx.unlearn)), ctx.device, ctx.seed,
                                ctx.progress, label="repair: fine-tuning on D_U")


@bdtool.hookimpl
def bdtool_register_repairs(register: Callable[..., None]) -> None:
    register(FinetuneRepair)
