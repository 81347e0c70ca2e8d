"""WaNet: a backdoor whose trigger is a fixed, smooth image warp (Nguyen and Tran, "WaNet --
Imperceptible Warping-based Backdoor Attack", ICLR 2021).

- Trigger (§4.1): a random field ``P`` of ``k × k`` control points with values in [-1, 1],
  normalised by its mean absolute value, upsampled bicubically to the image size and scaled by the
  strength ``s``; the warp is ``grid_sample`` of the image at ``identity + s · P / h`` (clipped to
  [-1, 1]). The paper's values: ``k = 4``, ``s = 0.5`` and ``grid_rescale = 1`` (§5.1, used on
  MNIST, CIFAR-10, GTSRB and CelebA).
- Poisoning (§4.2): dirty-label, a share ρ_a of the training set is warped with the fixed field and
  relabelled to the target.
- Noise mode (§4.2, Fig. 3): a further ``cross_ratio · n_poison`` training images (ρ_n = 2 ρ_a in
  the paper, §5.1) are warped with the fixed field *plus* random noise of up to one pixel and keep
  their labels, so the model learns this exact warp and not any warp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

import bdtool
from bdtool.core.interfaces import Attack, Poisoning
from bdtool.core.params import param
from bdtool.core.tensors import LabeledTensors


def identity_grid(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """grid_sample's identity sampling grid (H, W, 2) in [-1, 1] coordinates, (x, y) per pixel."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=device), torch.linspace(-1, 1, w, device=device),
                            indexing="ij")
    return torch.stack((xs, ys), dim=-1)


@dataclass
class WaNetParams:
    k: int = param(4, ge=2)
    """Control-grid size k × k (§4.1; the paper's k = 4, §5.1)."""
    s: float = param(0.5, gt=0)
    """Warping strength (§4.1; the paper's s = 0.5, §5.1)."""
    grid_rescale: float = param(1.0, gt=0)
    """Scale of the warped grid before clipping (the released code's ``grid_rescale``, 1)."""
    cross_ratio: float = param(2.0, ge=0)
    """Noise-mode images per poisoned image (ρ_n / ρ_a = 2, §5.1); 0 turns the noise mode off."""
    warp_seed: int = param(12345, ge=0)
    """Seed of the fixed warping field (the attacker's secret)."""


class WaNet(Attack):
    """A fixed smooth warp as the trigger, with WaNet's noise mode (Nguyen & Tran, ICLR 2021)."""

    name = "wanet"
    description = "warping-based trigger (k, s, grid_rescale) with noise mode cross_ratio (Nguyen & Tran 2021)"
    Params = WaNetParams

    def grid(self, h: int, w: int, device: torch.device) -> Tensor:
        """The fixed warped sampling grid (1, H, W, 2), in grid_sample's [-1, 1] coordinates (§4.1)."""
        p = self.params
        if p.k > min(h, w):
            raise ValueError(f"a {p.k}x{p.k} control grid does not fit a {h}x{w} image; use k <= {min(h, w)}")
        gen = torch.Generator().manual_seed(p.warp_seed)
        control = torch.rand(1, 2, p.k, p.k, generator=gen) * 2 - 1
        control = control / control.abs().mean()
        noise = F.interpolate(control, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        warped = (identity_grid(h, w).unsqueeze(0) + p.s * noise / h) * p.grid_rescale
        return warped.clamp(-1, 1).to(device)

    @staticmethod
    def warp(x: Tensor, grid: Tensor) -> Tensor:
        grid = grid.to(x.dtype).expand(x.shape[0], -1, -1, -1) if grid.shape[0] == 1 else grid.to(x.dtype)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True).clamp(0.0, 1.0)

    def apply(self, x: Tensor) -> Tensor:
        if len(x) == 0:
            return x.clone()
        return self.warp(x, self.grid(x.shape[-2], x.shape[-1], x.device))

    def poison(self, data: LabeledTensors, rate: float, generator: torch.Generator) -> Poisoning:
        """Dirty-label warped images (the default protocol with ``apply``), then the noise mode:
        ``round(cross_ratio · n_poison)`` other images warped with the field plus uniform noise in
        [-1, 1] pixel (the released code's ``(rand · 2 − 1) / h``), labels kept (§4.2)."""
        poisoned = super().poison(data, rate, generator)
        n_noise = int(round(self.params.cross_ratio * len(poisoned.poisoned_indices)))
        if n_noise == 0:
            return poisoned
        rest = torch.ones(len(data), dtype=torch.bool)
        rest[poisoned.poisoned_indices] = False
        candidates = torch.nonzero(rest).flatten()
        n_noise = min(n_noise, len(candidates))
        noise_idx = candidates[torch.randperm(len(candidates), generator=generator)[:n_noise]].sort().values
        h, w = data.x.shape[-2:]
        jitter = (torch.rand(n_noise, h, w, 2, generator=generator) * 2 - 1) / h
        grid = (self.grid(h, w, torch.device("cpu")) + jitter).clamp(-1, 1)
        x = poisoned.data.x
        x[noise_idx] = self.warp(x[noise_idx], grid.to(x.device))
        return Poisoning(LabeledTensors(x, poisoned.data.y), poisoned.poisoned_indices, noise_idx)


@bdtool.hookimpl
def bdtool_register_attacks(register: Callable[..., None]) -> None:
    register(WaNet)
