"""``proj-aware``: a backdoor built to defeat ``ours-proj`` (bdtool's own design; docs/attacks.md,
"An attack aware of ours-proj").

What ``ours-proj`` assumes (``defenses/activation_subspace.py``): the trigger moves the head's
input features along a *few* directions. It stamps D_U, whitens the per-sample differences
A(stamp(x)) − A(x) by the clean D_U's spread and projects out their top r ≤ ``max_rank`` (8)
singular directions, choosing the smallest r at which the stamped D_U stops going to the target.

What this attack does against that, by poisoning alone (bdtool's ``Attack`` interface poisons a
training set; it does not train the victim, so a regulariser on the victim's features is not
available to it):

- ``variants`` distinct triggers (default 16, twice ``ours-proj``'s ``max_rank``): seeded
  black-and-white squares of side ``size`` at distinct seeded positions spread over the image.
  In a convolutional network a patch's features appear where it sits (the small CNN pools its last
  feature map to 2 × 2 cells, so the head's 256 inputs are 64 channels × 4 cells) and in the
  channels its pattern excites, so different variants move the head's input in different
  directions rather than in one.
- Training: each payload image carries one variant, drawn uniformly, and is relabelled to the
  target; ``cover_ratio`` regularization samples (a variant, label kept) are off by default.
- Test time (``apply``): each image gets one variant too, chosen by a hash of its pixels, so the
  choice is fixed per image whatever the batch. The defender's stamped D_U (n = 50) then shows
  about every variant, and so does the evaluation half: the trigger's effect is spread over up to
  ``variants`` directions, more than the projection's largest rank can take out, and a universal
  stand-in trigger (knowledge ``none`` or ``target``) finds at most a few of them.

Why it may still fail: the network may funnel every variant into one shared "target" direction
before the head (then one direction suffices, as for BadNets); the measured result is in
docs/attacks.md.
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


@dataclass
class ProjAwareParams:
    variants: int = param(16, ge=1)
    """Distinct triggers (twice ``ours-proj``'s largest rank, 8)."""
    size: int = param(0, ge=0)
    """Side of each square in px; 0 = max(2, image_size // 8) (BadNets' automatic size)."""
    cover_ratio: float = param(0.0, ge=0)
    """Regularization samples (a variant, label kept) per payload sample; 0 = none."""
    pattern_seed: int = param(12345, ge=0)
    """Seed of the variants' patterns and positions (the attacker's secret)."""


class ProjAware(Attack):
    """Many small triggers at spread positions, one per image at training and at test, so the
    trigger's feature-space effect is not low-rank (an attack aware of ``ours-proj``)."""

    name = "proj-aware"
    description = ("aware of ours-proj: 16 distinct squares at spread positions, one per image (at training and, "
                   "by a pixel hash, at test), so the trigger's feature shift spans many directions")
    Params = ProjAwareParams

    def patch_size(self, image_size: int) -> int:
        return automatic_patch_size(self.params.size, image_size)

    def variant_stack(self, shape: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
        """(masks, patterns), each (variants, 1, H, W): square v at its own position."""
        _, h, w = shape[-3:]
        s = self.patch_size(min(h, w))
        m = self.params.variants
        if s > min(h, w):
            raise ValueError(f"a {s}px square does not fit a {h}x{w} image")
        places = (h - s + 1) * (w - s + 1)
        if m > places:
            raise ValueError(f"{m} variants need {m} distinct positions; a {s}px square has {places} in a {h}x{w} "
                             "image: use fewer variants or a smaller size")
        gen = torch.Generator().manual_seed(self.params.pattern_seed)
        where = torch.randperm(places, generator=gen)[:m]
        masks = torch.zeros(m, 1, h, w)
        patterns = torch.zeros(m, 1, h, w)
        for v, place in enumerate(where.tolist()):
            top, left = divmod(place, w - s + 1)
            square = (torch.rand(s, s, generator=gen) > 0.5).float()
            square[0, 0], square[-1, -1] = 1.0, 0.0  # both colours, so it changes any image
            masks[v, :, top:top + s, left:left + s] = 1.0
            patterns[v, :, top:top + s, left:left + s] = square
        return masks.to(device), patterns.to(device)

    def stamp(self, x: Tensor, which: Tensor) -> Tensor:
        """``x`` with variant ``which[i]`` stamped on image i."""
        masks, patterns = self.variant_stack(tuple(x.shape), x.device)
        which = which.to(x.device)
        return blend(x, patterns[which].to(x.dtype), 1.0, masks[which].to(x.dtype))

    def test_variants(self, x: Tensor) -> Tensor:
        """The variant of each image at test time: a hash of its pixels (on a 0–255 grid), so the
        same image gets the same variant in any batch."""
        if len(x) == 0:
            return torch.zeros(0, dtype=torch.long)
        levels = (x.detach().flatten(1).cpu().double() * 255).round().long()
        weights = torch.arange(1, levels.shape[1] + 1, dtype=torch.long) * 2654435761 % 1000003
        return (levels * weights).sum(1) % self.params.variants

    def apply(self, x: Tensor) -> Tensor:
        return self.stamp(x, self.test_variants(x))

    def poison(self, data: LabeledTensors, rate: float, generator: torch.Generator) -> Poisoning:
        """Payload images (relabelled) and regularization images (labels kept), each with a variant
        drawn uniformly with ``generator``."""
        draw = draw_payload_and_cover(data, self, rate, self.params.cover_ratio, generator)
        x, y = data.x.clone(), data.y.clone()
        changed = torch.cat([draw.payload, draw.cover])
        if len(changed):
            which = torch.randint(self.params.variants, (len(changed),), generator=generator)
            x[changed] = self.stamp(x[changed], which)
            y[draw.payload] = self.target_labels(data.y[draw.payload])
        return Poisoning(LabeledTensors(x, y), draw.payload, draw.cover)


@bdtool.hookimpl
def bdtool_register_attacks(register: Callable[..., None]) -> None:
    register(ProjAware)
