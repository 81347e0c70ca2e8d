"""Fine-Pruning (Liu, Dolan-Gavitt and Garg: "Fine-Pruning: Defending Against Backdooring Attacks
on Deep Neural Networks", RAID 2018); needs no backdoor knowledge.

Liu et al. §4 ("Pruning defense", "Fine-pruning"): backdoor behaviour lives in neurons of the
last convolutional layer that stay *dormant* on clean inputs. The defender

1. measures each channel's mean activation (after the layer's BatchNorm and ReLU) on clean data,
2. prunes channels in increasing order of that activation, recording the clean accuracy after
   each step, and stops before the accuracy degrades by more than a threshold,
3. fine-tunes the pruned network on the clean data (the pruned channels stay pruned).

Choices and deviations:

- The clean data is D_U, for both the activation ranking and the accuracy check (the paper uses
  a held-out validation set; bdtool's defenses see nothing but D_U). With n = 5 the accuracy moves
  in steps of 20 %, so pruning stops at the first channel whose removal changes one prediction.
- Pruning runs one channel at a time (``step`` = 1 % of the channels, rounded up: BackdoorBench's
  ``once_prune_ratio``) and stops at the first step whose D_U accuracy falls more than
  ``max_acc_drop`` (relative, 10 %: BackdoorBench's ``acc_ratio``) below the unpruned model's;
  the last step within the tolerance is kept. At most all but one channel are pruned.
- A channel is pruned by zeroing the scale and shift of the BatchNorm after the last conv (its
  ReLU output is then exactly 0), or the conv's filter and bias without a BatchNorm. On a
  residual block (ResNet18) this silences the last conv's channels, not the block's output,
  which the skip connection still carries; Liu et al. define the defense on plain conv stacks.
- Fine-tuning: BackdoorBench's recipe for its ``fp`` (SGD momentum 0.9, lr 0.01, cosine,
  weight decay 5e-4, batch 256, 100 epochs); the paper fine-tunes "until the validation accuracy
  no longer improves" without numbers. The mask is re-applied before every step and at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

import bdtool
from bdtool.core.compute.modules import ForwardCapture, preserve_modes
from bdtool.core.experiment.evaluation import accuracy
from bdtool.core.compute.training_defense import TrainingDefense
from bdtool.core.interfaces import DefenseContext
from bdtool.core.params import param
from bdtool.core.tensors import LabeledTensors
from bdtool.defenses._pruning import last_conv, silence_channels
from bdtool.defenses._recipes import BackdoorBenchFinetuneParams


@dataclass
class FinePruningParams(BackdoorBenchFinetuneParams):
    """Pruning tolerance and step, then the fine-tuning's SGD fields (see the module docstring for
    each default's source; momentum 0.9 is SGDParams')."""

    max_acc_drop: float = param(0.1, ge=0, lt=1)
    """Stop pruning before D_U's accuracy falls more than this fraction below the unpruned model's."""
    step: float = param(0.01, gt=0, le=1)
    """Share of the last conv's channels pruned per step (rounded up to whole channels)."""
    finetune: bool = True
    """False: prune only (Liu et al.'s "pruning defense")."""


@torch.no_grad()
def mean_channel_activation(model: nn.Module, layer: str, data: LabeledTensors, device: torch.device) -> Tensor:
    """Each channel's mean activation (clamped at 0, i.e. after the ReLU) of ``layer`` over ``data``,
    in eval mode (BN statistics untouched, modes restored)."""
    total: Tensor | None = None
    with preserve_modes(model), ForwardCapture(model, [layer]) as capture:
        model.eval()
        for xb, _ in data.batches(256):
            model(xb.to(device))
            out = capture.outputs[layer].clamp(min=0)
            act = out.mean(dim=tuple(range(2, out.dim()))).sum(dim=0)
            total = act if total is None else total + act
    assert total is not None
    return (total / len(data)).cpu()


class FinePruning(TrainingDefense):
    """Prune the last conv's channels dormant on clean D_U, then fine-tune (Liu et al. 2018)."""

    name = "fp"
    label = "Fine-Pruning"
    description = "Fine-Pruning: prune the last conv's channels dormant on D_U while D_U accuracy holds, then fine-tune (Liu et al. 2018)"
    requires_trigger = False
    accepts_trigger = False
    Params = FinePruningParams
    in_default_comparison = False

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        p: FinePruningParams = self.params
        conv_name, conv, bn = last_conv(model, self.name)
        probe = conv_name if bn is None else next(n for n, m in model.named_modules() if m is bn)
        activity = mean_channel_activation(model, probe, ctx.unlearn, ctx.device)
        order = activity.argsort()  # least active first
        channels = activity.numel()
        per_step = max(1, math.ceil(p.step * channels))
        base_acc = accuracy(model, ctx.unlearn, ctx.device)
        floor = base_acc * (1.0 - p.max_acc_drop)
        kept = 0
        originals = self._snapshot(conv, bn)
        for k in range(per_step, channels, per_step):
            silence_channels(conv, bn, order[:k])
            acc = accuracy(model, ctx.unlearn, ctx.device)
            ctx.progress("Fine-Pruning pruning", k, channels)
            if acc < floor - 1e-12:
                break
            kept = k
        self._restore(conv, bn, originals)
        pruned = order[:kept]
        silence_channels(conv, bn, pruned)
        ctx.progress("Fine-Pruning pruning", channels, channels)
        ctx.log_metric("fp.pruned_channels", float(kept), None)
        ctx.log_metric("fp.pruned_fraction", kept / channels, None)
        ctx.log_metric("fp.unlearn_acc_pruned", accuracy(model, ctx.unlearn, ctx.device), None)
        if p.finetune:
            self.fine_tune(model, ctx, p.train_config(), label="Fine-Pruning fine-tuning",
                           before_step=lambda _m: silence_channels(conv, bn, pruned))
            silence_channels(conv, bn, pruned)
        return model

    @staticmethod
    def _snapshot(conv: nn.Conv2d, bn: nn.Module | None) -> list[Tensor]:
        layer = bn if bn is not None else conv
        return [t.detach().clone() for t in (layer.weight, layer.bias) if t is not None]

    @staticmethod
    @torch.no_grad()
    def _restore(conv: nn.Conv2d, bn: nn.Module | None, saved: list[Tensor]) -> None:
        layer = bn if bn is not None else conv
        for tensor, value in zip([t for t in (layer.weight, layer.bias) if t is not None], saved):
            tensor.copy_(value)


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(FinePruning)
