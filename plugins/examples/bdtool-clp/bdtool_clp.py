"""Channel Lipschitzness-based Pruning (Zheng et al., "Data-free Backdoor Removal based on Channel
Lipschitzness", ECCV 2022), as a third-party bdtool plugin.

For every convolution followed by BatchNorm, each output channel's upper bound of the Lipschitz
constant (UCLC) is the largest singular value of its BN-scaled kernel. Backdoor channels have
unusually large UCLC; channels above ``mean + u·std`` of their layer are pruned (their BN scale
and shift set to zero). It needs no data and no trigger.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bdtool.api import Defense, DefenseContext, EvalResult, Metric, hookimpl, param


@dataclass
class CLPParams:
    u: float = param(3.0, gt=0)
    """Threshold in standard deviations above the layer's mean UCLC (the paper's default is 3)."""


class ChannelLipschitzPruning(Defense):
    name = "clp"
    label = "CLP"
    description = "data-free channel Lipschitzness pruning (Zheng et al. 2022; example plugin)"
    Params = CLPParams

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        modules = list(model.modules())
        pruned = 0
        for conv, bn in zip(modules, modules[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs()
            kernels = conv.weight * scale.view(-1, 1, 1, 1)
            # Each channel's kernel as an (in, k·k) matrix; its spectral norm is the channel's UCLC.
            uclc = torch.linalg.matrix_norm(kernels.flatten(2), ord=2)
            mask = uclc > uclc.mean() + self.params.u * uclc.std()
            bn.weight[mask] = 0.0
            bn.bias[mask] = 0.0
            pruned += int(mask.sum())
        ctx.log_metric("pruned_channels", float(pruned), None)  # logged as "clp.pruned_channels"
        return model


@hookimpl
def bdtool_register_defenses(register):
    register(ChannelLipschitzPruning)


class NonTargetBalancedAccuracy(Metric):
    """Mean per-class clean accuracy over every class except the backdoor's target: what a
    defense kept of the classes the attack did not touch (a metric plugin example)."""

    name = "nontarget_bal_acc"
    header = "NonTargetBalAcc"
    percent = True
    description = "mean per-class clean accuracy over the non-target classes (example metric plugin)"

    def compute(self, result: EvalResult, reference: EvalResult | None = None) -> float:
        accs = [a for c, a in enumerate(result.per_class_acc) if c != result.target_class and a == a]
        return sum(accs) / len(accs) if accs else float("nan")


@hookimpl
def bdtool_register_metrics(register):
    register(NonTargetBalancedAccuracy)
