"""Named grids of comparisons (``bdtool sweep NAME``): the type only. The presets themselves
(the supplement's Tables 7–10 and Figure 4) are registered by a plugin,
``bdtool.plugins.builtin.sweeps``, because they name defenses and the core never does.

Each preset is a list of row texts (the ``--defense`` grammar), the sample sizes and the target
classes; ``bdtool sweep NAME`` runs one comparison per target.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    rows: list[str]
    samples: list[int]
    targets: list[int] = field(default_factory=lambda: [0])
