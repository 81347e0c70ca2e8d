"""Neural Cleanse (Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao: "Neural Cleanse: Identifying and
Mitigating Backdoor Attacks in Neural Networks", IEEE S&P 2019); needs no backdoor knowledge:
it finds the target class itself (so it does not use a granted target label either).

1. Reverse engineering (Wang et al. §IV-C): for every class c, a mask m (H×W, in [0, 1]) and a
   pattern p (C×H×W, in [0, 1]), both through tanh (m = (tanh(m')+1)/2), minimise
   ``CE(f((1−m)·x + m·p), c) + λ·‖m‖₁`` over D_U with Adam (lr 0.1, betas 0.5/0.9). λ starts at
   1e-3 and adapts: after ``patience`` epochs in a row with the attack success rate ≥ 99 % it is
   multiplied by 2, after ``patience`` below it divided by 2^1.5; the kept mask is the smallest
   ‖m‖₁ seen at ≥ 99 %. Early stop once λ went both up and down and the best norm improved by
   less than 1 % for ``early_stop_patience`` epochs (NC's released code, also BackdoorBench's).
2. Detection (§IV-C): with the masks' L1 norms l_c, the median absolute deviation
   MAD = 1.4826·median|l − median(l)| and anomaly index |l_c − median(l)|/MAD; a class whose
   norm is below the median with an anomaly index > 2 is flagged. The detected class is the
   flagged one with the smallest norm. Logged as ``nc.detected_class`` (−1: none) and
   ``nc.anomaly_index`` (of the smallest-norm class, flagged or not), with every class's norm as
   ``nc.mask_l1`` (step = class).
3. Mitigation by unlearning (§VI-B): when a class is flagged, 20 % of the clean data is stamped
   with its reversed trigger, keeping the true labels, and the model is fine-tuned on it. When
   none is flagged the model is returned unchanged (no backdoor detected).

Defaults and deviations:

- Reverse engineering runs ``reverse_epochs`` = 80 epochs over D_U per class in batches of 32
  (BackdoorBench's ``nc_epoch``; NC's code runs 1000 epochs of ~31 batches on 1000 samples, out
  of reach of a CPU for 10 classes). Masks and patterns start uniform at random in [0, 1] (NC's
  code), from a generator seeded with the run's seed and the class.
- D_U is the only clean data (NC uses held-out clean samples for both steps). With n = 5 the
  attack success rate moves in steps of 20 %, so "≥ 99 %" means every sample.
- Unlearning: NC fine-tunes for one epoch on 10 % of the training set; one epoch of D_U is one
  step here, so the unlearning uses BackdoorBench's recipe for ``nc`` instead (SGD momentum 0.9,
  lr 0.01, cosine, weight decay 5e-4, batch 256, 100 epochs), on D_U with ``unlearning_ratio``
  (20 %, at least one sample) of it stamped with the trigger of the detected class.
- When several classes are flagged, only the detected (smallest-norm) one is unlearned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bdtool
from bdtool.core import interrupts
from bdtool.core.compute.modules import frozen_eval
from bdtool.core.compute.training_defense import TrainingDefense
from bdtool.core.interfaces import DefenseContext, DetectionReport
from bdtool.core.params import param
from bdtool.core.tensors import LabeledTensors
from bdtool.defenses._recipes import BackdoorBenchFinetuneParams

MAD_CONSISTENCY = 1.4826
"""Makes the MAD a consistent estimator of the standard deviation for normal data (NC §IV-C)."""


@dataclass
class NeuralCleanseParams(BackdoorBenchFinetuneParams):
    """Reverse-engineering and detection settings, then the unlearning's SGD fields (module
    docstring; momentum 0.9 is SGDParams')."""

    reverse_epochs: int = param(80, ge=1)
    reverse_batch_size: int = param(32, ge=1)
    mask_lr: float = param(0.1, gt=0)
    init_cost: float = param(1e-3, gt=0)
    attack_success: float = param(0.99, gt=0, le=1)
    patience: int = param(5, ge=1)
    cost_multiplier: float = param(2.0, gt=1)
    early_stop_threshold: float = param(0.99, gt=0, le=1)
    early_stop_patience: int = param(25, ge=1)
    anomaly_threshold: float = param(2.0, gt=0)
    unlearning_ratio: float = param(0.2, gt=0, le=1)
    """Share of D_U stamped with the reversed trigger (true labels kept) for the unlearning."""


@dataclass
class ReversedTrigger:
    """The smallest trigger found for one class: mask (1×H×W) and pattern (C×H×W), in [0, 1]."""

    target: int
    mask: Tensor
    pattern: Tensor
    l1: float
    success: float
    """Attack success rate on D_U of this trigger when it was kept."""

    def stamp(self, x: Tensor) -> Tensor:
        mask, pattern = self.mask.to(x.device), self.pattern.to(x.device)
        return (1 - mask) * x + mask * pattern


@dataclass
class Detection:
    norms: list[float]
    anomaly_index: list[float]
    flagged: list[int] = field(default_factory=list)
    """Flagged classes, smallest norm first."""

    @property
    def detected(self) -> int | None:
        return self.flagged[0] if self.flagged else None

    @property
    def smallest(self) -> int:
        """The class of the smallest norm (the suspect, flagged or not)."""
        return min(range(len(self.norms)), key=lambda c: self.norms[c])

    def report(self, threshold: float) -> DetectionReport:
        """The verdict as ``ctx.report_detection`` takes it: the anomaly index of the smallest norm
        against ``threshold``, pointing at the detected class (or the smallest norm's when none)."""
        detected = self.detected
        return DetectionReport(detected=detected is not None, target=detected if detected is not None else self.smallest,
                               score=self.anomaly_index[self.smallest], threshold=threshold)


def mad_outliers(norms: list[float], threshold: float = 2.0) -> Detection:
    """NC's outlier test on the masks' L1 norms (module docstring, step 2)."""
    values = torch.tensor(norms, dtype=torch.float64)
    median = float(values.quantile(0.5))  # NC's code: numpy's median (mean of the middle two)
    deviations = (values - median).abs()
    mad = MAD_CONSISTENCY * float(deviations.quantile(0.5))
    index = [float(d / mad) if mad > 0 else (math.inf if d > 0 else 0.0) for d in deviations]
    flagged = sorted((c for c, v in enumerate(norms) if v < median and index[c] > threshold), key=lambda c: norms[c])
    return Detection(norms=list(norms), anomaly_index=index, flagged=flagged)


def _atanh_init(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> Tensor:
    u = torch.rand(shape, generator=gen)
    return torch.atanh((u - 0.5) * (2 - 1e-7)).to(device).requires_grad_(True)


def reverse_engineer(model: nn.Module, data: LabeledTensors, target: int, p: NeuralCleanseParams,
                     device: torch.device, seed: int) -> ReversedTrigger:
    """NC's trigger search for ``target`` (module docstring, step 1); the model is not changed."""
    _, channels, height, width = data.x.shape
    gen = torch.Generator().manual_seed(seed * 1000 + target)
    mask_raw = _atanh_init((1, height, width), gen, device)
    pattern_raw = _atanh_init((channels, height, width), gen, device)
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=p.mask_lr, betas=(0.5, 0.9))
    cost = p.init_cost
    up = down = cost_set = early_counter = 0
    went_up = went_down = False
    best_l1, best_mask, best_pattern, best_success = math.inf, None, None, 0.0
    early_best = math.inf
    shuffle = torch.Generator().manual_seed(seed)
    for _ in range(p.reverse_epochs):
        interrupts.check()
        hits = seen = 0
        regs: list[float] = []
        for xb, _ in data.batches(p.reverse_batch_size, shuffle=True, generator=shuffle):
            xb = xb.to(device)
            mask = (torch.tanh(mask_raw) + 1) / 2
            pattern = (torch.tanh(pattern_raw) + 1) / 2
            logits = model((1 - mask) * xb + mask * pattern)
            labels = torch.full((len(xb),), target, dtype=torch.long, device=device)
            reg = mask.abs().sum()
            loss = F.cross_entropy(logits, labels) + cost * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hits += int((logits.argmax(1) == target).sum())
            seen += len(xb)
            regs.append(float(reg.detach()))
        success = hits / seen
        reg_mean = sum(regs) / len(regs)
        if success >= p.attack_success and reg_mean < best_l1:
            best_l1, best_success = reg_mean, success
            best_mask = ((torch.tanh(mask_raw) + 1) / 2).detach().clone()
            best_pattern = ((torch.tanh(pattern_raw) + 1) / 2).detach().clone()
        # early stop (NC's code): λ went both ways and the best norm stopped improving
        if best_l1 < math.inf:
            early_counter = early_counter + 1 if best_l1 >= p.early_stop_threshold * early_best else 0
        early_best = min(early_best, best_l1)
        if went_up and went_down and early_counter >= p.early_stop_patience:
            break
        # λ schedule
        if cost == 0 and success >= p.attack_success:
            cost_set += 1
            if cost_set >= p.patience:
                cost, up, down, went_up, went_down = p.init_cost, 0, 0, False, False
        else:
            cost_set = 0
        if success >= p.attack_success:
            up, down = up + 1, 0
        else:
            up, down = 0, down + 1
        if up >= p.patience:
            up, cost, went_up = 0, cost * p.cost_multiplier, True
        elif down >= p.patience:
            down, cost, went_down = 0, cost / p.cost_multiplier ** 1.5, True
    if best_mask is None:  # never reached the success rate: keep the last trigger (NC's code)
        best_mask = ((torch.tanh(mask_raw) + 1) / 2).detach().clone()
        best_pattern = ((torch.tanh(pattern_raw) + 1) / 2).detach().clone()
        best_l1, best_success = float(best_mask.abs().sum()), success
    assert best_pattern is not None
    return ReversedTrigger(target=target, mask=best_mask.cpu(), pattern=best_pattern.cpu(), l1=best_l1,
                           success=best_success)


def reverse_triggers(model: nn.Module, ctx: DefenseContext, classes: list[int], p: NeuralCleanseParams,
                     label: str) -> list[ReversedTrigger]:
    """``reverse_engineer`` for each of ``classes`` on D_U, the model frozen in eval mode (its
    weights and modes restored after); progress under ``label``."""
    with frozen_eval(model):
        triggers = []
        for i, c in enumerate(classes):
            triggers.append(reverse_engineer(model, ctx.unlearn, c, p, ctx.device, ctx.seed))
            ctx.progress(label, i + 1, len(classes))
    return triggers


def unlearning_set(data: LabeledTensors, trigger: ReversedTrigger, ratio: float, seed: int) -> LabeledTensors:
    """D_U with ``ratio`` of its samples (at least one) stamped with ``trigger``, true labels kept."""
    k = max(1, int(len(data) * ratio))
    chosen = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:k]
    x = data.x.clone()
    x[chosen] = trigger.stamp(x[chosen]).clamp(0, 1)
    return LabeledTensors(x, data.y.clone())


class NeuralCleanse(TrainingDefense):
    """Reverse-engineer a trigger per class, flag the MAD outlier, unlearn its trigger (Wang et al. 2019)."""

    name = "nc"
    label = "Neural Cleanse"
    description = "Neural Cleanse: per-class trigger reverse engineering, MAD anomaly index > 2 flags the target, unlearning with its trigger (Wang et al. 2019)"
    requires_trigger = False
    accepts_trigger = False
    requires_target_label = False
    accepts_target_label = False
    Params = NeuralCleanseParams
    in_default_comparison = False

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        p: NeuralCleanseParams = self.params
        triggers = reverse_triggers(model, ctx, list(range(ctx.num_classes)), p, "Neural Cleanse trigger search")
        for trigger in triggers:
            ctx.log_metric("nc.mask_l1", trigger.l1, trigger.target)
        detection = mad_outliers([t.l1 for t in triggers], p.anomaly_threshold)
        smallest = detection.smallest
        ctx.log_metric("nc.anomaly_index", detection.anomaly_index[smallest], None)
        ctx.log_metric("nc.smallest_norm_class", float(smallest), None)
        ctx.log_metric("nc.detected_class", float(detection.detected if detection.detected is not None else -1), None)
        ctx.log_metric("nc.flagged_classes", float(len(detection.flagged)), None)
        ctx.report_detection(detection.report(p.anomaly_threshold))
        if detection.detected is None:
            return model.eval()  # no backdoor detected: NC leaves the model as it is
        data = unlearning_set(ctx.unlearn, triggers[detection.detected], p.unlearning_ratio, ctx.seed)
        self.fine_tune(model, ctx, p.train_config(), data=data, label="Neural Cleanse unlearning",
                       metric_prefix="unlearn_")
        return model


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(NeuralCleanse)
