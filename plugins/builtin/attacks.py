"""Built-in attacks: BadNets (Gu et al. 2017) and Blend (Chen et al. 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

import bdtool
from bdtool.core.interfaces import Attack

Position = Literal["bottom-right", "bottom-left", "top-right", "top-left"]


@dataclass
class BadNetsParams:
    size: int = 0
    """Patch side in pixels; 0 = automatic, max(2, image_size // 8) (2 px on 8×8, 3 px on 28×28)."""
    position: Position = "bottom-right"
    margin: int = 0
    """Pixels between the patch and the image border."""
    pattern: Literal["white", "checkerboard"] = "white"

    def validate(self) -> None:
        if self.size < 0 or self.margin < 0:
            raise ValueError("size and margin must be >= 0")


class BadNets(Attack):
    """A square patch stamped at a fixed position (BadNets, Gu et al. 2017)."""

    name = "badnets"
    description = "square patch (size, position, margin, pattern white|checkerboard)"
    Params = BadNetsParams

    def patch_size(self, image_size: int) -> int:
        return self.params.size or max(2, image_size // 8)

    def mask_and_pattern(self, shape: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
        _, h, w = shape[-3:]
        s = self.patch_size(min(h, w))
        m = self.params.margin
        if s + m > min(h, w):
            raise ValueError(f"a {s}px patch with margin {m} does not fit a {h}x{w} image")
        top = m if self.params.position.startswith("top") else h - m - s
        left = m if self.params.position.endswith("left") else w - m - s
        mask = torch.zeros(1, h, w, device=device)
        mask[:, top : top + s, left : left + s] = 1.0
        pattern = torch.ones(1, h, w, device=device)
        if self.params.pattern == "checkerboard":
            rows = torch.arange(h, device=device).view(-1, 1)
            cols = torch.arange(w, device=device).view(1, -1)
            pattern = ((rows + cols) % 2 == 0).float().unsqueeze(0)
        return mask, pattern

    def apply(self, x: Tensor) -> Tensor:
        mask, pattern = self.mask_and_pattern(tuple(x.shape), x.device)
        return x * (1 - mask) + pattern * mask


@dataclass
class BlendParams:
    alpha: float = 0.2
    """Blend ratio of the pattern (Chen et al. 2017 use 0.2 for random patterns at training)."""
    pattern_seed: int = 12345

    def validate(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")


class Blend(Attack):
    """A fixed, seeded uniform-noise image blended into the input with ratio alpha."""

    name = "blend"
    description = "fixed seeded random pattern blended with alpha"
    Params = BlendParams

    def pattern(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        gen = torch.Generator().manual_seed(self.params.pattern_seed)
        return torch.rand(tuple(shape[-3:]), generator=gen).to(device)

    def apply(self, x: Tensor) -> Tensor:
        a = self.params.alpha
        return (1 - a) * x + a * self.pattern(tuple(x.shape), x.device)


@bdtool.hookimpl
def bdtool_register_attacks(register: Callable[..., None]) -> None:
    register(BadNets)
    register(Blend)
