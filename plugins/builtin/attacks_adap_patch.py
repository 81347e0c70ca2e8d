"""Adap-Patch: several low-opacity patch triggers at training, fewer at full opacity at test, with
regularization samples (Qi, Xie, Li, Wang and Mittal, "Revisiting the Assumption of Latent
Separability for Backdoor Defenses", ICLR 2023, §4; the authors' implementation is
``poison_tool_box/adaptive_patch.py`` of vtu81/backdoor-toolbox, read, not copied).

- **k patch triggers** (§4): the authors use k = 4 different patches (CIFAR-10: a phoenix and a
  firefox corner logo, BadNets' 4-px patch, a Trojan square) with training opacities 0.5, 0.2,
  0.5 and 0.3 (their ``config.py``); each payload or regularization image carries *one* of them
  (an equal share each). Here the four patches are fixed, seeded black-and-white squares of side
  ``size`` at the four corners (distinct positions, as the authors' are), opacities
  ``alphas = 0.5+0.2+0.5+0.3``.
- **Test time** (§4): a subset of the patches, stamped at a *higher* opacity than at training:
  the authors stamp two at opacity 1, so no training image ever held the test-time trigger;
  here ``test_patches = 0+2`` (the two trained at 0.5) at ``test_alpha = 1``.
- **Regularization samples**: the authors' commands use twice as many regularization as payload
  samples (CIFAR-10: poison rate 0.003, cover rate 0.006; GTSRB 0.005, 0.01), so
  ``cover_ratio = 2``; they carry a training patch and keep their labels.

``size = 0`` gives max(2, image_size // 8) px (BadNets' automatic size: 2 px on 8 × 8 digits, 3 px
on 28 × 28 Fashion-MNIST). ``--poison-rate`` is the payload share of the training set
(docs/attacks.md, "Adaptive attacks").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

import bdtool
from bdtool.core.interfaces import Attack, Poisoning
from bdtool.core.params import param
from bdtool.core.tensors import LabeledTensors
from bdtool.plugins.builtin.adaptive_poison import blend, draw_payload_and_cover
from bdtool.plugins.builtin.attacks import automatic_patch_size

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass
class AdapPatchParams:
    alphas: tuple[float, ...] = param((0.5, 0.2, 0.5, 0.3), gt=0, le=1)
    """Training opacity of each patch, one per patch, at most four (the authors' 0.5, 0.2, 0.5, 0.3)."""
    test_patches: tuple[int, ...] = param((0, 2), ge=0)
    """The patches stamped at test time (indices into ``alphas``; the authors stamp two of four)."""
    test_alpha: float = param(1.0, gt=0, le=1)
    """Test-time opacity of those patches (the authors' 1)."""
    size: int = param(0, ge=0)
    """Patch side in px; 0 = max(2, image_size // 8)."""
    cover_ratio: float = param(2.0, ge=0)
    """Regularization samples per payload sample (cover rate / poison rate, 0.006 / 0.003)."""
    pattern_seed: int = param(12345, ge=0)
    """Seed of the patches' black-and-white patterns."""

    def validate(self) -> None:
        if not 1 <= len(self.alphas) <= len(CORNERS):
            raise ValueError(f"alphas must give 1 to {len(CORNERS)} patches (one per corner), got {len(self.alphas)}")
        if not self.test_patches:
            raise ValueError("test_patches must name at least one patch")
        bad = [i for i in self.test_patches if i >= len(self.alphas)]
        if bad:
            raise ValueError(f"test_patches {bad[0]} is not a patch: there are {len(self.alphas)} (0 to "
                             f"{len(self.alphas) - 1})")


class AdapPatch(Attack):
    """k corner patches at low opacity at training (one per poisoned image), a subset at full
    opacity at test, regularization samples keeping their labels (Qi et al., ICLR 2023, §4)."""

    name = "adap-patch"
    description = ("adaptive patch (Qi et al. 2023): 4 corner patches at opacity 0.5/0.2/0.5/0.3 at training, "
                   "patches 0+2 at opacity 1 at test; cover_ratio regularization samples keep their labels")
    Params = AdapPatchParams

    def patch_size(self, image_size: int) -> int:
        return automatic_patch_size(self.params.size, image_size)

    def patches(self, shape: tuple[int, ...], device: torch.device) -> list[tuple[Tensor, Tensor]]:
        """(mask, pattern) of every patch, each (1, H, W): a seeded black-and-white square (never
        all one colour) at its corner."""
        _, h, w = shape[-3:]
        s = self.patch_size(min(h, w))
        if 2 * s > min(h, w):
            raise ValueError(f"{s}px patches at the four corners do not fit a {h}x{w} image apart; use size <= "
                             f"{min(h, w) // 2}")
        gen = torch.Generator().manual_seed(self.params.pattern_seed)
        out = []
        for corner in CORNERS[: len(self.params.alphas)]:
            square = (torch.rand(s, s, generator=gen) > 0.5).float()
            square[0, 0], square[-1, -1] = 1.0, 0.0  # both colours, so it changes any image
            top = 0 if corner.startswith("top") else h - s
            left = 0 if corner.endswith("left") else w - s
            mask = torch.zeros(1, h, w)
            pattern = torch.zeros(1, h, w)
            mask[:, top:top + s, left:left + s] = 1.0
            pattern[:, top:top + s, left:left + s] = square
            out.append((mask.to(device), pattern.to(device)))
        return out

    def apply(self, x: Tensor) -> Tensor:
        out = x.clone()
        patches = self.patches(tuple(x.shape), x.device)
        for i in self.params.test_patches:
            mask, pattern = patches[i]
            out = blend(out, pattern.to(x.dtype), self.params.test_alpha, mask.to(x.dtype))
        return out

    def poison(self, data: LabeledTensors, rate: float, generator: torch.Generator) -> Poisoning:
        """Payload (relabelled) and regularization (labels kept) samples; the j-th drawn of each
        carries patch j mod k at its training opacity (an equal share per patch, §4)."""
        draw = draw_payload_and_cover(data, self, rate, self.params.cover_ratio, generator)
        x, y = data.x.clone(), data.y.clone()
        patches = self.patches(tuple(x.shape), x.device)
        k = len(patches)
        for order in (draw.payload_order, draw.cover_order):
            for j, (mask, pattern) in enumerate(patches):
                idx = order[j::k]
                if len(idx):
                    x[idx] = blend(x[idx], pattern.to(x.dtype), self.params.alphas[j], mask.to(x.dtype))
        y[draw.payload] = self.target_labels(data.y[draw.payload])
        return Poisoning(LabeledTensors(x, y), draw.payload, draw.cover)


@bdtool.hookimpl
def bdtool_register_attacks(register: Callable[..., None]) -> None:
    register(AdapPatch)
