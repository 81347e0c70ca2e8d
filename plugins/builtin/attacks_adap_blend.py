"""Adap-Blend: a blend trigger shown only in pieces at training time, with regularization samples
(Qi, Xie, Li, Wang and Mittal, "Revisiting the Assumption of Latent Separability for Backdoor
Defenses", ICLR 2023, §4; the authors' implementation is ``poison_tool_box/adaptive_blend.py`` of
vtu81/backdoor-toolbox, read, not copied).

Latent-separability defenses (spectral signatures, activation clustering, and ``ours-proj``,
which projects out the directions in which stamped features differ from clean ones) assume that
poisoned samples form their own cluster in the latent space. Adap-Blend suppresses that cluster
with two devices (§4):

- **Regularization samples**: besides the payload samples (stamped, relabelled to the target), a
  further ``cover_ratio`` × as many training images are stamped *and keep their labels*, so the
  trigger as seen at training does not by itself mean the target class. The authors' commands use
  as many regularization as payload samples (CIFAR-10: poison rate 0.003, cover rate 0.003), so
  ``cover_ratio = 1``.
- **Asymmetric, partial trigger**: the blend pattern is divided into ``pieces`` equal tiles (a
  4 × 4 grid, 16 pieces) and each training image (payload and regularization alike) shows a random
  ``1 − mask_rate`` of them (half: ``mask_rate = 0.5``), blended with ``alpha = 0.15``; at test
  time the whole pattern is blended with ``test_alpha = 0.2`` (the authors' ``-alpha 0.15
  -test_alpha 0.2``), so no single training image carries the test-time trigger.

The pattern is a fixed, seeded uniform-noise image (bdtool's ``blend`` pattern) where the authors
blend a cartoon image (Hello Kitty), which bdtool does not ship. The grid is the same 4 × 4 on
every image size: 2 × 2 px pieces on 8 × 8 digits, 7 × 7 px on 28 × 28 Fashion-MNIST, 8 × 8 px on
32 × 32 as in the paper. ``--poison-rate`` is the payload share of the training set; the paper's
0.3 % is 4 images of digits' 1 257, so bdtool's default rate (5 %) is used there (docs/attacks.md).
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
from bdtool.plugins.builtin.adaptive_poison import blend, draw_payload_and_cover


@dataclass
class AdapBlendParams:
    alpha: float = param(0.15, gt=0, le=1)
    """Blend opacity at training time (the authors' ``-alpha 0.15``, §4 / their README)."""
    test_alpha: float = param(0.2, gt=0, le=1)
    """Blend opacity at test time (ASR, and what trigger-knowing defenses stamp; ``-test_alpha 0.2``)."""
    pieces: int = param(16, ge=1)
    """Tiles the pattern is divided into, a square number (16 = a 4 × 4 grid, as the authors')."""
    mask_rate: float = param(0.5, ge=0, lt=1)
    """Share of the tiles hidden on each training image (the authors' ``mask_rate = 0.5``)."""
    cover_ratio: float = param(1.0, ge=0)
    """Regularization samples (trigger, label kept) per payload sample (cover rate / poison rate,
    0.003 / 0.003 in the authors' commands)."""
    pattern_seed: int = param(12345, ge=0)
    """Seed of the uniform-noise pattern (the attacker's secret)."""

    def validate(self) -> None:
        side = math.isqrt(self.pieces)
        if side * side != self.pieces:
            raise ValueError(f"pieces must be a square number (4, 9, 16, ...), got {self.pieces}")


class AdapBlend(Attack):
    """A seeded noise pattern blended in pieces at training, whole at test, with regularization
    samples that keep their labels (Qi et al., ICLR 2023, §4)."""

    name = "adap-blend"
    description = ("adaptive blend (Qi et al. 2023): pattern in random pieces at training (alpha 0.15), whole at "
                   "test (0.2); cover_ratio regularization samples keep their labels")
    Params = AdapBlendParams

    def pattern(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        gen = torch.Generator().manual_seed(self.params.pattern_seed)
        return torch.rand(tuple(shape[-3:]), generator=gen).to(device)

    def piece_map(self, h: int, w: int, device: torch.device) -> Tensor:
        """(H, W) tile index of every pixel, row-major over the side × side grid."""
        side = math.isqrt(self.params.pieces)
        if side > min(h, w):
            raise ValueError(f"{self.params.pieces} pieces ({side}x{side}) do not fit a {h}x{w} image")
        rows = torch.arange(h, device=device) * side // h
        cols = torch.arange(w, device=device) * side // w
        return rows.view(-1, 1) * side + cols.view(1, -1)

    def training_masks(self, n: int, h: int, w: int, generator: torch.Generator) -> Tensor:
        """(n, 1, H, W) masks, each showing a random ``pieces − round(mask_rate · pieces)`` tiles."""
        pieces = self.params.pieces
        shown = pieces - int(round(self.params.mask_rate * pieces))
        ranks = torch.rand(n, pieces, generator=generator).argsort(dim=1).argsort(dim=1)
        keep = (ranks < shown).float()
        return keep[:, self.piece_map(h, w, torch.device("cpu"))].unsqueeze(1)

    def apply(self, x: Tensor) -> Tensor:
        self.piece_map(x.shape[-2], x.shape[-1], x.device)  # the grid must fit, as at training
        return blend(x, self.pattern(tuple(x.shape), x.device), self.params.test_alpha)

    def poison(self, data: LabeledTensors, rate: float, generator: torch.Generator) -> Poisoning:
        """Payload (relabelled) and regularization (labels kept) samples, each blended with
        ``alpha`` through its own random half of the tiles (§4)."""
        draw = draw_payload_and_cover(data, self, rate, self.params.cover_ratio, generator)
        x, y = data.x.clone(), data.y.clone()
        changed = torch.cat([draw.payload, draw.cover])
        if len(changed):
            h, w = x.shape[-2:]
            masks = self.training_masks(len(changed), h, w, generator).to(x.device, x.dtype)
            x[changed] = blend(x[changed], self.pattern(tuple(x.shape), x.device), self.params.alpha, masks)
            y[draw.payload] = self.target_labels(data.y[draw.payload])
        return Poisoning(LabeledTensors(x, y), draw.payload, draw.cover)


@bdtool.hookimpl
def bdtool_register_attacks(register: Callable[..., None]) -> None:
    register(AdapBlend)
