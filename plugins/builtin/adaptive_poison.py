"""What the adaptive attacks share (Qi et al., "Revisiting the Assumption of Latent Separability
for Backdoor Defenses", ICLR 2023, §4; docs/attacks.md, "Adaptive attacks"): the draw of
*payload* samples (stamped, relabelled to the target: they carry the backdoor) and
*regularization* samples (stamped, **labels kept**: they teach the model that the trigger alone,
in the form shown at training, does not mean the target, which keeps the poisoned samples close to
the clean ones in the latent space), and the blending of a pattern into images.

The authors' code (vtu81/backdoor-toolbox) calls the regularization samples "cover" samples and
counts both as shares of the whole training set; here ``--poison-rate`` is the payload share (as
for every dirty-label attack in bdtool) and ``cover_ratio`` the number of regularization samples
per payload sample, so the ratio the paper fixes survives a change of poison rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bdtool.core.errors import BdtoolError
from bdtool.core.interfaces import Attack
from bdtool.core.tensors import LabeledTensors


@dataclass(frozen=True)
class PoisonDraw:
    """Which training samples an adaptive attack changes: ``payload`` (relabelled to the target)
    and ``cover`` (regularization samples, labels kept), disjoint and each sorted. ``payload_order``
    and ``cover_order`` are the same indices in the order they were drawn (an attack that spreads
    several triggers over them assigns by that order, so the assignment is random too)."""

    payload: Tensor
    cover: Tensor
    payload_order: Tensor
    cover_order: Tensor


def draw_payload_and_cover(data: LabeledTensors, attack: Attack, rate: float, cover_ratio: float,
                           generator: torch.Generator) -> PoisonDraw:
    """``round(rate · N)`` payload samples among the images ``attack`` may poison (the non-target
    ones: bdtool's dirty-label protocol, ``Attack.poison``; all of them for an all-to-all backdoor)
    and ``round(cover_ratio · n_payload)`` regularization samples among the remaining images of any
    class (the authors draw them disjoint from the payload), both with ``generator``."""
    payload_order = attack.draw_poisoned(data, rate, generator)
    n_payload = len(payload_order)
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[payload_order] = False
    others = torch.nonzero(rest).flatten()
    n_cover = int(round(cover_ratio * n_payload))
    if n_cover > len(others):
        raise BdtoolError(f"cover_ratio {cover_ratio} needs {n_cover} regularization samples besides the "
                          f"{n_payload} payload ones; only {len(others)} images remain")
    cover_order = others[torch.randperm(len(others), generator=generator)[:n_cover]]
    return PoisonDraw(payload_order.sort().values, cover_order.sort().values, payload_order, cover_order)


def blend(x: Tensor, pattern: Tensor, alpha: float | Tensor, mask: Tensor | None = None) -> Tensor:
    """``x + alpha · mask · (pattern − x)``: the pattern blended in with opacity ``alpha`` where
    ``mask`` is 1 (everywhere without a mask); stays in [0, 1] for x and pattern in [0, 1] and
    alpha · mask in [0, 1]."""
    weight = alpha if mask is None else alpha * mask
    return (x + weight * (pattern - x)).clamp(0.0, 1.0)
