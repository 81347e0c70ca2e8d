"""SIG: a clean-label backdoor with a sinusoidal signal (Barni, Kallas and Tondi, "A new backdoor
attack in CNNs by training set corruption without label poisoning", ICIP 2019).

- Trigger (§2, Eq. 3, the "sinusoidal signal"): ``v(i, j) = Δ · sin(2π j f / m)`` on every row
  ``i`` of an ``m``-column image, added to every channel and clipped to [0, 1]. The paper's values
  are on a [0, 255] scale: ``Δ = 20``, ``f = 6`` (its §3, the signal used on GTSRB and MNIST), here
  ``Δ = 20/255`` on [0, 1] images.
- Poisoning (§2, §3): *clean-label*. Only images of the target class are corrupted, and their
  labels are kept; the paper's poisoning ratio α is the fraction of the *target class* that is
  corrupted, so ``--poison-rate`` is a share of the target class here (``poison_rate_of``).
- Test time (§2): the signal is added to images of the other classes; the paper allows a stronger
  signal at test time than at training (Δ_test ≥ Δ_train), ``delta_test`` (0 = the same as ``delta``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

import bdtool
from bdtool.core.interfaces import Attack, Poisoning
from bdtool.core.params import param
from bdtool.core.tensors import LabeledTensors


@dataclass
class SIGParams:
    delta: float = param(20 / 255, gt=0, le=1)
    """Amplitude Δ of the training signal on [0, 1] images (the paper's Δ = 20 of 255, §3)."""
    frequency: float = param(6.0, gt=0)
    """Cycles f across the image width (the paper's f = 6, §3)."""
    delta_test: float = param(0.0, ge=0, le=1)
    """Amplitude at test time (ASR, and what trigger-knowing defenses stamp); 0 = ``delta``."""


class SIG(Attack):
    """A horizontal sinusoid added to the image; clean-label: only target-class training images
    carry it, with their own labels (Barni et al., ICIP 2019, §2)."""

    name = "sig"
    description = "clean-label sinusoidal signal x + delta*sin(2*pi*j*f/m) (Barni et al. 2019); poison rate = share of the target class"
    Params = SIGParams
    poison_rate_of = "target class"

    def signal(self, shape: tuple[int, ...], device: torch.device, delta: float) -> Tensor:
        """Δ·sin(2π j f / m) as a (1, H, W) tensor, the same on every row (§2, Eq. 3)."""
        h, w = shape[-2:]
        j = torch.arange(w, dtype=torch.float32, device=device)
        row = delta * torch.sin(2 * math.pi * j * self.params.frequency / w)
        return row.view(1, 1, w).expand(1, h, w)

    def stamp(self, x: Tensor, delta: float) -> Tensor:
        return (x + self.signal(tuple(x.shape), x.device, delta)).clamp(0.0, 1.0)

    def apply(self, x: Tensor) -> Tensor:
        return self.stamp(x, self.params.delta_test or self.params.delta)

    def poison(self, data: LabeledTensors, rate: float, generator: torch.Generator) -> Poisoning:
        """``rate`` of the target class gets the training signal; every label is kept (§2)."""
        chosen = self.target_class_share(data, rate, generator)
        x = data.x.clone()
        if len(chosen):
            x[chosen] = self.stamp(x[chosen], self.params.delta)
        return Poisoning(LabeledTensors(x, data.y.clone()), chosen)


@bdtool.hookimpl
def bdtool_register_attacks(register: Callable[..., None]) -> None:
    register(SIG)
