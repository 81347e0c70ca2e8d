"""Evaluation and metrics (DESIGN.md §7).

- ACC: clean accuracy on the evaluation half; CTCA: clean accuracy on its target-class images.
- ASR: share of non-target evaluation images, stamped with the trigger, classified as the target.
- Per-class and minimum class accuracy (the supplement notes its Score misses a lost class, §B.1).
- Score = 100 · (ACC_after / ACC_before) · max(0, 1 − ASR_after / ASR_before) — reconstructed; it
  fits the supplement's Table 7 rows within about half a point.
"""

from __future__ import annotations


import torch
from torch import nn

from bdtool.core.interfaces import Attack
from bdtool.core.results import EvalResult
from bdtool.core.tensors import LabeledTensors


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
