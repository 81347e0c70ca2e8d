"""ANP: Adversarial Neuron Pruning (Wu and Wang: "Adversarial Neuron Perturbation Exposes Backdoors in
Pre-trained Models", NeurIPS 2021); needs no backdoor knowledge.

Wu & Wang §3-4: a backdoored network's backdoor neurons are the ones whose small perturbation
flips clean predictions. Every neuron k (a BatchNorm channel: scale γ_k, shift β_k) gets a mask
m_k ∈ [0, 1] and adversarial perturbations δ_k, ξ_k ∈ [−ε, ε] of its scale and shift
(γ_k·(m_k + δ_k), β_k·(1 + ξ_k)). The masks solve (their Eq. 5)

    min_m  α·L(m, 0; D_U) + (1 − α)·max_{δ,ξ ∈ [−ε,ε]} L(m, (δ, ξ); D_U)

by alternating, on each batch: δ, ξ drawn uniformly in [−ε, ε] and moved by ``steps`` signed
gradient-ascent steps of size ε/steps (clipped to [−ε, ε]); then one SGD step on m (momentum 0.9)
and m clipped to [0, 1]. Finally every neuron with m_k < ``threshold`` is pruned (its BN scale
set to 0, as ANP's released code does: the shift is kept) and the rest are left as they were.

Defaults: ANP's released code (csdongxian/ANP_backdoor, also BackdoorBench's ``anp`` config):
ε = 0.4, one perturbation step, α = 0.2, mask lr 0.2 (SGD momentum 0.9), 2000 iterations on
batches of 128 drawn with replacement from the clean data, pruning by threshold 0.2.

Deviation (tiny D_U): ANP's code optimises the masks with the network in train mode, i.e. with
BatchNorm normalising by each batch's statistics. With n = 5 a batch's statistics are those of
5 images (one-sample batches even break BatchNorm1d), so here BatchNorm always uses the victim's
running statistics (eval mode) and nothing updates them; the network's weights never change
during the optimisation (only m, δ, ξ). Batches are drawn with replacement from D_U as in ANP's
code, of ``min(batch_size, n)`` samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import bdtool
from bdtool.core import interrupts
from bdtool.core.compute.modules import frozen_eval
from bdtool.core.errors import DefenseInputError
from bdtool.core.interfaces import Defense, DefenseContext
from bdtool.core.params import param
from bdtool.defenses._pruning import affine_batchnorms


@dataclass
class ANPParams:
    """ANP's defaults (its released code; see the module docstring)."""

    eps: float = param(0.4, ge=0, le=1)
    """Bound ε of the neuron perturbations δ (scale) and ξ (shift)."""
    steps: int = param(1, ge=1)
    """Signed gradient-ascent steps on the perturbations per batch (step size ε/steps)."""
    alpha: float = param(0.2, ge=0, le=1)
    """Weight of the natural (unperturbed) loss; 1 − α weighs the perturbed loss."""
    lr: float = param(0.2, gt=0)
    """Learning rate of the masks' SGD (momentum 0.9)."""
    iterations: int = param(2000, ge=1)
    """Mask optimisation steps (one batch each)."""
    batch_size: int = param(128, ge=1)
    threshold: float = param(0.2, ge=0, le=1)
    """Neurons whose mask ends below this are pruned."""


class AdversarialNeuronPruning(Defense):
    """Optimise per-neuron masks against adversarial neuron perturbations; prune low masks (Wu & Wang 2021)."""

    name = "anp"
    label = "ANP"
    description = "Adversarial Neuron Pruning: BN-neuron masks optimised under adversarial neuron perturbation, prune masks < 0.2 (Wu & Wang 2021)"
    requires_trigger = False
    accepts_trigger = False
    Params = ANPParams
    in_default_comparison = False

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        p: ANPParams = self.params
        layers = affine_batchnorms(model)
        if not layers:
            raise DefenseInputError(f"{self.name}: the model has no BatchNorm layer with scale and shift; "
                                    "ANP perturbs and masks BatchNorm neurons, so it cannot run on this model: "
                                    "use fp, nc or ibau, which need none")
        masks = self.optimise_masks(model, layers, ctx)
        pruned = 0
        total = 0
        with torch.no_grad():
            for (name, bn), m in zip(layers, masks):
                low = m < p.threshold
                bn.weight[low] = 0.0
                pruned += int(low.sum())
                total += m.numel()
        ctx.log_metric("anp.pruned_neurons", float(pruned), None)
        ctx.log_metric("anp.pruned_fraction", pruned / total, None)
        return model

    def optimise_masks(self, model: nn.Module, layers: list[tuple[str, nn.Module]], ctx: DefenseContext) -> list[Tensor]:
        """ANP's mask optimisation (module docstring); returns one mask per BN layer, in [0, 1]."""
        p: ANPParams = self.params
        dev = ctx.device
        masks = [torch.ones(bn.num_features, device=dev, requires_grad=True) for _, bn in layers]
        noise_w = [torch.zeros(bn.num_features, device=dev, requires_grad=True) for _, bn in layers]
        noise_b = [torch.zeros(bn.num_features, device=dev, requires_grad=True) for _, bn in layers]
        mask_opt = torch.optim.SGD(masks, lr=p.lr, momentum=0.9)
        noise_opt = torch.optim.SGD(noise_w + noise_b, lr=p.eps / p.steps)
        weights = [bn.weight.detach() for _, bn in layers]
        biases = [bn.bias.detach() for _, bn in layers]
        gen = torch.Generator().manual_seed(ctx.seed)
        n = len(ctx.unlearn)
        batch = min(p.batch_size, n)
        x_all, y_all = ctx.unlearn.x, ctx.unlearn.y
        report = max(1, p.iterations // 20)

        def forward(x: Tensor, perturbed: bool) -> Tensor:
            overrides: dict[str, Tensor] = {}
            for (name, _), w, b, m, dw, db in zip(layers, weights, biases, masks, noise_w, noise_b):
                overrides[f"{name}.weight"] = w * (m + dw) if perturbed else w * m
                overrides[f"{name}.bias"] = b * (1.0 + db) if perturbed else b
            return functional_call(model, overrides, (x,))

        with frozen_eval(model):
            for it in range(1, p.iterations + 1):
                interrupts.check()
                idx = torch.randint(n, (batch,), generator=gen)
                xb, yb = x_all[idx].to(dev), y_all[idx].to(dev)
                # 1. the adversarial neuron perturbation
                if p.eps > 0:
                    with torch.no_grad():
                        for t in noise_w + noise_b:
                            t.uniform_(-p.eps, p.eps)
                    for _ in range(p.steps):
                        noise_opt.zero_grad(set_to_none=True)
                        (-F.cross_entropy(forward(xb, True), yb)).backward()
                        for t in noise_w + noise_b:
                            t.grad = torch.sign(t.grad)
                        noise_opt.step()
                        with torch.no_grad():
                            for t in noise_w + noise_b:
                                t.clamp_(-p.eps, p.eps)
                # 2. the mask step on α·natural + (1 − α)·perturbed loss
                mask_opt.zero_grad(set_to_none=True)
                robust = F.cross_entropy(forward(xb, True), yb) if p.eps > 0 else torch.zeros((), device=dev)
                natural = F.cross_entropy(forward(xb, False), yb)
                loss = p.alpha * natural + (1.0 - p.alpha) * robust
                loss.backward()
                mask_opt.step()
                with torch.no_grad():
                    for m in masks:
                        m.clamp_(0.0, 1.0)
                if it % report == 0 or it == p.iterations:
                    ctx.log_metric("anp.natural_loss", natural.item(), it)
                    ctx.log_metric("anp.robust_loss", robust.item(), it)
                    ctx.progress("ANP mask optimisation", it, p.iterations)
        return [m.detach() for m in masks]


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(AdversarialNeuronPruning)
