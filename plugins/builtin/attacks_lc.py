"""LC: the label-consistent backdoor (Turner, Tsipras and Madry, "Label-Consistent Backdoor
Attacks", arXiv:1912.02771, 2019).

- Poisoning (§3, §4.1): *clean-label*. Images of the target class are first made hard to classify
  by an adversarial perturbation against a *clean* model (ℓ∞-bounded PGD, Madry et al. 2018), so
  the model must rely on the trigger to label them; then the trigger is stamped and the label kept.
  The paper's ℓ∞ bound is ε = 16 on a [0, 255] scale (§4.1), ``eps = 16/255`` here. ``--poison-rate``
  is the share of the *target class* poisoned, as the paper counts it (§4.2, ``poison_rate_of``).
- Trigger (§3, §4.3): a black-and-white checkerboard patch (3 × 3 px on 32 × 32 CIFAR-10) at all
  four corners (the paper's variant that survives flips in data augmentation, §4.3); here
  ``size = 0`` gives max(2, image_size // 8) px, as BadNets' patch. ``amplitude`` < 1 is the
  paper's reduced-visibility trigger (§4.3); the default 1 is the full-amplitude one.
- The clean model comes from the victim pipeline through ``Attack.prepare``
  (``AttackContext.clean_model``: the victim's dataset, model, recipe and seed with nothing
  poisoned, cached in the store).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import bdtool
from bdtool.core.errors import BdtoolError
from bdtool.core.interfaces import Attack, AttackContext, Poisoning
from bdtool.core.params import param
from bdtool.core.tensors import LabeledTensors
from bdtool.plugins.builtin.attacks import automatic_patch_size, checkerboard


@dataclass
class LCParams:
    eps: float = param(16 / 255, ge=0, le=1)
    """ℓ∞ bound of the adversarial perturbation on [0, 1] images (the paper's ε = 16 of 255, §4.1)."""
    steps: int = param(20, ge=0)
    """PGD steps (ours; the paper does not tie its step count to a model this small)."""
    step_size: float = param(0.0, ge=0)
    """PGD step; 0 = 2.5 · eps / steps (Madry et al. 2018's rule)."""
    size: int = param(0, ge=0)
    """Corner patch side in px; 0 = max(2, image_size // 8)."""
    amplitude: float = param(1.0, gt=0, le=1)
    """Trigger amplitude in (0, 1]: 1 = the full black-and-white patch, less = reduced visibility (§4.3)."""
    batch_size: int = param(256, ge=1)


class LabelConsistent(Attack):
    """Target-class images perturbed adversarially against a clean model, then a checkerboard
    patch at the four corners; labels kept (Turner et al. 2019, §3-§4)."""

    name = "lc"
    description = "label-consistent: PGD (eps) against a clean model + corner checkerboards (Turner et al. 2019); poison rate = share of the target class"
    Params = LCParams
    poison_rate_of = "target class"

    def __init__(self, target_class: int = 0, params: LCParams | None = None) -> None:
        super().__init__(target_class, params)
        self._context: AttackContext | None = None

    def mask_and_pattern(self, shape: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
        """The four corner patches' mask and a checkerboard pattern, each (1, H, W)."""
        h, w = shape[-2:]
        s = automatic_patch_size(self.params.size, min(h, w))
        if 2 * s > min(h, w):
            raise ValueError(f"four {s}px corner patches do not fit a {h}x{w} image")
        mask = torch.zeros(1, h, w, device=device)
        for top in (0, h - s):
            for left in (0, w - s):
                mask[:, top:top + s, left:left + s] = 1.0
        return mask, checkerboard(h, w, device)

    def apply(self, x: Tensor) -> Tensor:
        mask, pattern = self.mask_and_pattern(tuple(x.shape), x.device)
        m = self.params.amplitude * mask
        return (x * (1 - m) + pattern * m).clamp(0.0, 1.0)

    def prepare(self, train: LabeledTensors, ctx: AttackContext) -> None:
        self._context = ctx

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, device: torch.device,
                progress: Callable[[str, int, int], None] | None = None) -> Tensor:
        """ℓ∞ PGD from the clean image (no random start, so the same inputs give the same
        perturbation) that raises the clean model's loss on the true label (§3)."""
        p = self.params
        if p.eps == 0 or p.steps == 0 or len(x) == 0:
            return x.clone()
        step = p.step_size or 2.5 * p.eps / p.steps
        model = model.to(device).eval()
        out = []
        total = (len(x) + p.batch_size - 1) // p.batch_size
        for i, start in enumerate(range(0, len(x), p.batch_size)):
            xb = x[start:start + p.batch_size].to(device)
            yb = y[start:start + p.batch_size].to(device)
            adv = xb.clone()
            for _ in range(p.steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), yb)
                (grad,) = torch.autograd.grad(loss, adv)
                with torch.no_grad():
                    adv = adv + step * grad.sign()
                    adv = torch.min(torch.max(adv, xb - p.eps), xb + p.eps).clamp(0.0, 1.0)
            out.append(adv.detach().cpu())
            if progress is not None:
                progress("label-consistent PGD", i + 1, total)
        return torch.cat(out).to(x.device)

    def poison(self, data: LabeledTensors, rate: float, generator: torch.Generator) -> Poisoning:
        """``rate`` of the target class: PGD against the clean model, then the corner patch;
        every label kept (§3)."""
        chosen = self.target_class_share(data, rate, generator)
        x = data.x.clone()
        if len(chosen):
            if self._context is None:
                raise BdtoolError("the label-consistent attack needs a clean model at poisoning time: "
                                  "call prepare(train, AttackContext(...)) first (the victim pipeline does)")
            ctx = self._context
            model = ctx.clean_model()
            adv = self.perturb(model, x[chosen], data.y[chosen], ctx.device, ctx.progress)
            x[chosen] = self.apply(adv)
        return Poisoning(LabeledTensors(x, data.y.clone()), chosen)


@bdtool.hookimpl
def bdtool_register_attacks(register: Callable[..., None]) -> None:
    register(LabelConsistent)
