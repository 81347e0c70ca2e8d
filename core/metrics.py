"""Evaluation and metrics (DESIGN.md §7).

- ACC: clean accuracy on the evaluation half; CTCA: clean accuracy on its target-class images.
- ASR: share of non-target evaluation images, stamped with the trigger, classified as the target.
- Per-class and minimum class accuracy (the supplement notes its Score misses a lost class, §B.1).
- Score = 100 · (ACC_after / ACC_before) · max(0, 1 − ASR_after / ASR_before) — reconstructed; it
  fits the supplement's Table 7 rows within about half a point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

import bdtool
from bdtool.core.interfaces import Attack, Metric
from bdtool.core.tensors import LabeledTensors


@dataclass
class EvalResult:
    acc: float
    asr: float
    ctca: float
    per_class_acc: list[float]
    n_eval: int
    target_class: int
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def min_class_acc(self) -> float:
        return min(self.per_class_acc) if self.per_class_acc else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["min_class_acc"] = self.min_class_acc
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalResult":
        d = {k: v for k, v in d.items() if k != "min_class_acc"}
        return cls(**d)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    was_training = model.training
    model.eval()
    preds = []
    for start in range(0, len(x), batch_size):
        preds.append(model(x[start : start + batch_size].to(device)).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def evaluate(model: nn.Module, data: LabeledTensors, attack: Attack, num_classes: int,
             device: torch.device) -> EvalResult:
    """ACC, CTCA, per-class accuracy and ASR of ``model`` on ``data`` (the evaluation half)."""
    y = data.y.cpu()
    clean_pred = predict(model, data.x, device)
    correct = clean_pred == y
    per_class = []
    for c in range(num_classes):
        members = y == c
        per_class.append(float(correct[members].float().mean()) if members.any() else float("nan"))
    target = attack.target_class
    non_target = y != target
    stamped = attack.apply(data.x[non_target])
    asr = float((predict(model, stamped, device) == target).float().mean()) if non_target.any() else float("nan")
    return EvalResult(
        acc=float(correct.float().mean()),
        asr=asr,
        ctca=per_class[target],
        per_class_acc=per_class,
        n_eval=len(y),
        target_class=target,
    )


def score(after: EvalResult, before: EvalResult) -> float:
    """Score of DESIGN.md §7 (reference = the victim before defense)."""
    if before.acc <= 0 or before.asr <= 0:
        return float("nan")
    return 100.0 * (after.acc / before.acc) * max(0.0, 1.0 - after.asr / before.asr)


class Accuracy(Metric):
    name = "acc"
    description = "clean accuracy on the evaluation half"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return result.acc


class AttackSuccessRate(Metric):
    name = "asr"
    higher_is_better = False
    description = "share of triggered non-target images classified as the target"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return result.asr


class CleanTargetClassAccuracy(Metric):
    name = "ctca"
    description = "clean accuracy on target-class images"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return result.ctca


class MinClassAccuracy(Metric):
    name = "min_class_acc"
    description = "lowest per-class clean accuracy (catches a lost class)"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        return result.min_class_acc


class Score(Metric):
    name = "score"
    description = "100·(ACC/ACC_before)·max(0, 1−ASR/ASR_before)"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        if reference is None:
            raise ValueError("score needs the victim's evaluation as reference")
        return score(result, reference)


BUILTIN_METRICS: tuple[type[Metric], ...] = (Score, AttackSuccessRate, Accuracy, CleanTargetClassAccuracy, MinClassAccuracy)


@bdtool.hookimpl
def bdtool_register_metrics(register: Callable[..., None]) -> None:
    for metric in BUILTIN_METRICS:
        register(metric)
