"""I-BAU: Implicit Backdoor Adversarial Unlearning (Zeng, Chen, Park, Mao, Jin, Jia: "Adversarial
Unlearning of Backdoors via Implicit Hypergradient", ICLR 2022); needs no backdoor knowledge.

Zeng et al. §3 pose unlearning as the minimax ``min_θ max_δ L(f_θ(x + δ), y)`` over the clean
data with one *universal* perturbation δ, and solve it with the implicit hypergradient (their
Algorithm 1): each round

1. (inner, the maximisation) δ starts at 0 and takes one SGD step (lr 10) per batch of D_U on
   ``−CE(f(x + δ), ŷ) + 0.001·‖δ‖²``, ŷ the model's own predictions;
2. (outer) per batch, the model takes one Adam step (lr 1e-3) along the hypergradient of the
   outer loss ``CE(f(x + δ on a portion of the batch), y)`` through δ*(θ): with the inner map
   Φ(δ, θ) = δ − 0.1·∇_δ L_inner(δ, θ) (L_inner = −CE(f(x₀ + δ), y₀) + 0.001·‖δ‖² on the first
   batch), v solves v = (∂Φ/∂δ)ᵀv + ∂L_outer/∂δ by K fixed-point iterations and the gradient is
   ``∂L_outer/∂θ + (∂Φ/∂θ)ᵀ v``.

Defaults: I-BAU's released code (YiZeng623/I-BAU ``defense.py``): 5 rounds, K = 5, Adam lr 1e-3,
batch 100, inner map step 0.1, δ's SGD lr 10, regulariser 0.001, outer portion 1 %, δ not clipped
(the code's L2-ball projection is commented out), the network in eval mode throughout (BatchNorm
uses and keeps its running statistics; its scale and shift are trained).

Deviation (tiny D_U): the outer loss patches ``int(batch · 1 %)`` images with δ, which is 0 for a
batch under 100 images (every D_U with n < 100): the hypergradient term would then vanish and
I-BAU would be plain Adam fine-tuning. Here at least one image per batch is patched
(``max(1, int(batch·portion))``). Rounds stay 5: with n ≤ 100 that is 5 outer steps in all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bdtool
from bdtool.core import interrupts
from bdtool.core.compute.modules import preserve_modes
from bdtool.core.interfaces import Defense, DefenseContext
from bdtool.core.params import param


@dataclass
class IBAUParams:
    """I-BAU's defaults (its released code; see the module docstring)."""

    rounds: int = param(5, ge=1)
    """Unlearning rounds (a fresh universal perturbation each)."""
    K: int = param(5, ge=1)
    """Fixed-point iterations of the implicit hypergradient."""
    lr: float = param(1e-3, gt=0)
    """The outer (model) Adam learning rate."""
    batch_size: int = param(100, ge=1)
    inner_lr: float = param(0.1, gt=0)
    """Step of the inner gradient-descent map Φ in the hypergradient."""
    pert_lr: float = param(10.0, gt=0)
    """SGD learning rate of the universal perturbation's search."""
    reg: float = param(1e-3, ge=0)
    """Weight of ‖δ‖² in the inner objective."""
    portion: float = param(0.01, ge=0, le=1)
    """Share of each outer batch patched with δ (at least one image)."""


class IBAU(Defense):
    """Adversarial unlearning of a universal perturbation through the implicit hypergradient (Zeng et al. 2022)."""

    name = "ibau"
    label = "I-BAU"
    description = "I-BAU: minimax unlearning of a universal adversarial perturbation via the implicit hypergradient (Zeng et al. 2022)"
    requires_trigger = False
    accepts_trigger = False
    Params = IBAUParams
    in_default_comparison = False

    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        p: IBAUParams = self.params
        dev = ctx.device
        gen = torch.Generator().manual_seed(ctx.seed)
        # The fixed batches of the outer loop (I-BAU's images_list), drawn once from shuffled D_U.
        batches = [(x.to(dev), y.to(dev)) for x, y in ctx.unlearn.batches(p.batch_size, shuffle=True, generator=gen)]
        x0, y0 = batches[0]
        params = [prm for prm in model.parameters() if prm.requires_grad]
        opt = torch.optim.Adam(params, lr=p.lr)

        def inner_loss(delta: Tensor) -> Tensor:
            return -F.cross_entropy(model(x0 + delta), y0) + p.reg * delta.pow(2).sum()

        with preserve_modes(model):
            model.eval()
            for rnd in range(1, p.rounds + 1):
                delta = self.universal_perturbation(model, ctx, gen)
                outer_sum = 0.0
                for xb, yb in batches:
                    interrupts.check()
                    opt.zero_grad(set_to_none=True)
                    outer = self.hypergradient(model, params, delta, xb, yb, inner_loss, gen)
                    opt.step()
                    outer_sum += outer * len(yb)
                ctx.log_metric("ibau.outer_loss", outer_sum / len(ctx.unlearn), rnd)
                ctx.log_metric("ibau.pert_norm", float(delta.norm()), rnd)
                ctx.progress("I-BAU unlearning", rnd, p.rounds)
        return model

    def universal_perturbation(self, model: nn.Module, ctx: DefenseContext, gen: torch.Generator) -> Tensor:
        """Step 1: one pass of SGD over D_U maximising the loss against the model's own predictions."""
        p: IBAUParams = self.params
        x = ctx.unlearn.x
        delta = torch.zeros((1, *x.shape[1:]), device=ctx.device, requires_grad=True)
        opt = torch.optim.SGD([delta], lr=p.pert_lr)
        for xb, _ in ctx.unlearn.batches(p.batch_size, shuffle=True, generator=gen):
            xb = xb.to(ctx.device)
            with torch.no_grad():
                predicted = model(xb).argmax(1)
            loss = -F.cross_entropy(model(xb + delta), predicted) + p.reg * delta.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.zero_grad(set_to_none=True)
        return delta.detach()

    def hypergradient(self, model: nn.Module, params: list[Tensor], delta: Tensor, xb: Tensor, yb: Tensor,
                      inner_loss: Callable[[Tensor], Tensor], gen: torch.Generator) -> float:
        """Step 2: set each parameter's ``.grad`` to the implicit hypergradient of the outer loss
        (fixed-point method, K iterations); returns the outer loss."""
        p: IBAUParams = self.params
        d = delta.detach().clone().requires_grad_(True)
        count = max(1, int(len(xb) * p.portion))
        chosen = torch.randperm(len(xb), generator=gen)[:count].to(xb.device)
        patch = torch.zeros_like(xb)
        patch[chosen] = 1.0
        outer = F.cross_entropy(model(xb + patch * d), yb)
        grads = torch.autograd.grad(outer, [d, *params], allow_unused=True)
        g_delta = grads[0] if grads[0] is not None else torch.zeros_like(d)
        g_params = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads[1:], params)]
        (g_inner,) = torch.autograd.grad(inner_loss(d), [d], create_graph=True)
        mapped = d - p.inner_lr * g_inner  # Φ(δ, θ)
        v = torch.zeros_like(d)
        for _ in range(p.K):
            previous = v
            (jv,) = torch.autograd.grad(mapped, [d], grad_outputs=v, retain_graph=True)
            v = jv + g_delta
            if float((v - previous).norm()) < 1e-10:
                break
        implicit = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
        for w, g, gi in zip(params, g_params, implicit):
            w.grad = g + gi if gi is not None else g
        return float(outer.detach())


@bdtool.hookimpl
def bdtool_register_defenses(register: Callable[..., None]) -> None:
    register(IBAU)
