"""Training recipes that several defenses share (not a plugin)."""

from __future__ import annotations

from dataclasses import dataclass

from bdtool.core.compute.training import SGDParams


@dataclass
class BackdoorBenchFinetuneParams(SGDParams):
    """BackdoorBench's fine-tuning recipe for its ``fp`` and ``nc`` defenses: SGD momentum 0.9,
    lr 0.01, cosine schedule, weight decay 5e-4, batch 256, 100 epochs (momentum, weight decay and
    schedule are ``SGDParams``' defaults). Fine-Pruning fine-tunes with it and Neural Cleanse
    unlearns with it (docs/baselines.md, "The field's defenses")."""

    epochs: int = 100
    lr: float = 0.01
    batch_size: int = 256
