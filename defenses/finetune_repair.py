"""The repair step: one epoch of fine-tuning on the clean unlearning set D_U (supplement §B.2).

The supplement repairs an edited model by fine-tuning it for one epoch on D_U only ("We are
limited to finetune only on unseen unlearn data", §B.2) and studies the learning rate η
(Table 8: η = 1e-2 "was the most effective when aiming for a decent CTCA and a low ASR").
The optimiser (SGD, momentum 0.9), the batch size min(n, 64), the constant schedule and the weight
decay are our reconstruction (docs/method.md, "Repair"). It trains in the shared loop
(:func:`bdtool.core.compute.training.train_loop`, plain cross-entropy).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal

from torch import nn

import bdtool
from bdtool.core.compute.training import SGDParams, train_loop
from bdtool.core.errors import DefenseInputError
from bdtool.core.interfaces import DefenseContext, Repair


@dataclass
class FinetuneRepairParams(SGDParams):
    """The repair's SGD settings. Momentum 0.9 and weight decay 5e-4 are SGDParams' (bdtool's
    victim-training defaults) *[reconstruction]*."""

    epochs: int = 1
    """One epoch in the supplement (§B.2)."""
    lr: float = 1e-2
    """η (supplement Table 8: best 1e-2)."""
    batch_size: int = 64
    """At most this many samples per batch: the batch size is min(n, batch_size) *[reconstruction]*."""
    schedule: Literal["cosine", "constant", "step"] = "constant"
    """Constant η, as in the supplement's Table 8 *[reconstruction]*."""


class FinetuneRepair(Repair):
    """Fine-tune the (edited) model on the clean D_U: SGD with momentum, constant η, seeded by
    ``ctx.seed``. BN layers train during the epoch, as in any fine-tuning."""

    name = "finetune"
    is_default = True
    description = "one epoch of SGD (momentum 0.9) on the clean D_U, learning rate lr (paper's repair, Table 8)"
    Params = FinetuneRepairParams

    def config(self, n: int) -> SGDParams:
        """The SGD settings for a D_U of ``n`` samples (batch size capped at n)."""
        config = self.params.train_config()
        return replace(config, batch_size=max(1, min(n, config.batch_size)))

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        if len(ctx.unlearn) == 0:
            raise DefenseInputError("repair 'finetune' needs at least one unlearning sample")
        train_loop(model, ctx.unlearn, self.config(len(ctx.unlearn)), ctx.device, ctx.seed,
                   progress=ctx.progress, label="repair: fine-tuning on D_U")
        return model


@bdtool.hookimpl
def bdtool_register_repairs(register: Callable[..., None]) -> None:
    register(FinetuneRepair)
