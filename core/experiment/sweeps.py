"""Named grids of comparisons (``bdtool sweep NAME``): the type only. The presets themselves
(the supplement's Tables 7–10 and Figure 4) are registered by a plugin,
``bdtool.plugins.builtin.sweeps``, because they name defenses and the core never does.

Each preset is a list of row texts (the ``--defense`` grammar), the sample sizes and either the
target classes (one comparison per target, on the ``--attack`` victim) or its own list of victims
(``victims``: attack, target, poison rate, victim seed; one comparison per victim, clean victims
included), for presets measured over victims rather than over draws of D_U.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SweepVictim:
    """One victim of a sweep over victims: the ``--attack`` text, its target, poison rate (0 = a
    clean victim) and training seed."""

    attack: str
    target: int
    poison_rate: float
    seed: int

    @property
    def kind(self) -> str:
        """How the sweep's summary groups it: the attack's name, or ``clean``."""
        return "clean" if self.poison_rate == 0 else self.attack.partition(":")[0]

    @property
    def label(self) -> str:
        what = self.kind if self.kind == "clean" else f"{self.attack} → {self.target}"
        return f"{what}, victim seed {self.seed}"

    @property
    def folder(self) -> str:
        what = self.kind if self.kind == "clean" else f"{self.kind}-target{self.target}"
        return f"{what}-seed{self.seed}"


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    rows: list[str]
    samples: list[int]
    targets: list[int] = field(default_factory=lambda: [0])
    victims: list[SweepVictim] = field(default_factory=list)
    """When set, the sweep's own victims (``--attack``, ``--target``, ``--poison-rate`` and
    ``--victim-seed`` do not apply) and ``targets`` is unused."""
