"""Stamping the unlearning set with the known trigger, for the defenses that use backdoor
knowledge (actFT, BaEraser): one place that turns an attack unable to stamp D_U into a clear error.
"""

from __future__ import annotations

from torch import Tensor

from bdtool.core.errors import DefenseInputError
from bdtool.core.interfaces import Attack


def stamp(attack: Attack, x: Tensor, owner: str) -> Tensor:
    """``attack.apply(x)``, turning an attack that cannot stamp these images into a clear error."""
    try:
        return attack.apply(x)
    except ValueError as exc:
        raise DefenseInputError(f"{owner}: the attack cannot stamp the unlearning images: {exc}") from None
