"""The template of the defenses that train (docs/architecture.md, "Training defenses"):
``TrainingDefense`` is a ``Defense`` that owns the training step basicFT, actFT, Fine-Pruning, NAD,
BaEraser, NC's unlearning and retraining share, so none of them repeats it. It lives in the compute
layer, beside ``train_loop``, because the contracts (``core/interfaces.py``) import only contracts.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bdtool.core.compute.training import LoopState, SGDParams, metric_logger, train_loop
from bdtool.core.interfaces import Defense, DefenseContext
from bdtool.core.tensors import LabeledTensors


class TrainingDefense(Defense):
    """A defense whose ``apply`` trains the model (or a copy of it) with ``fine_tune``."""

    def fine_tune(self, model: nn.Module, ctx: DefenseContext, config: SGDParams, *,
                  data: LabeledTensors | None = None, label: str = "fine-tuning", metric_prefix: str = "",
                  seed_offset: int = 0, **loop: Any) -> LoopState:
        """``train_loop`` on ``data`` (default D_U) with ``config``, on ``ctx.device`` under
        ``ctx.seed + seed_offset``; each epoch's loss terms logged as
        ``<name>.<metric_prefix><term>``, its progress shown as ``label``. ``loop`` passes the rest
        to ``train_loop`` (``loss``, ``before_step``, ``stop``, ``nesterov``, ``lr_drop_epoch``)."""
        return train_loop(model, ctx.unlearn if data is None else data, config, ctx.device, ctx.seed + seed_offset,
                          on_epoch=metric_logger(ctx.log_metric, f"{self.name}.{metric_prefix}{{}}"),
                          progress=ctx.progress, label=label, **loop)
