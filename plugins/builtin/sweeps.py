"""The supplement's experiments as sweep presets: Tables 7–10 and Figure 4 (docs/reproducing.md).
Registered as a plugin because the grids name defenses (``ours``, ``actft``, ...), which the
core never does.
"""

from __future__ import annotations

from typing import Callable

import bdtool
from bdtool.core.experiment.sweeps import Sweep


def _table8_rows() -> list[str]:
    rows = []
    for knowledge in ("trigger", "target"):
        rows.append(f"ours:knowledge={knowledge}")
        rows += [f"ours:knowledge={knowledge},repair={eta}" for eta in ("1e-6", "1e-5", "1e-4", "1e-3", "1e-2", "1e-1")]
    return rows


def _table9_rows() -> list[str]:
    return [f"ours:knowledge={k},alpha={a},beta={b}" for k in ("trigger", "target") for b in (-1, 0, 1) for a in (-1, 0, 1)]


def _figure4_rows() -> list[str]:
    return [f"ours:knowledge={k},bn={bn},lam={lam},gamma={gamma}"
            for k in ("trigger", "target") for bn in ("fixed", "update")
            for lam in (0.5, 1.0, 1.5) for gamma in (0.0, 0.25, 0.5, 1.0)]


TABLE7_ROWS = ["suppress-target", "actft", "baeraser", "ours", "ours:repair=0.01", "basicft", "nad",
               "ours:knowledge=target", "ours:knowledge=target,repair=0.01", "ours:knowledge=none", "retrain"]
"""The supplement's Table 7 rows, with the null reference row first and ``ours`` under the
``none`` threat model added. The paper's "¬BDK" rows are run as ``knowledge=target``: the
reconstruction draws their D_U from the target class, so they know the target label, and the
label says so (docs/method.md, "Threat model")."""

CLASS_PRESERVING_ROWS = ["suppress-target", "ours", "ours-proj", "ours-proj:shrinkage=1,rank=1",
                         "ours-proj:knowledge=target", "ours-proj:knowledge=none", "actft", "nad"]
"""The class-preserving edit under each threat model (the trigger given; the target label only and
nothing, with Neural Cleanse's reversed trigger) and as first released (``shrinkage=1,rank=1``: an
orthogonal rank-1 projection, no whitening), beside the classifier edit, actFT, NAD and the null
reference row (docs/method.md, "Class-preserving edit"); run once per data set and attack
(``--dataset``, ``--attack``)."""

FIELD_ROWS = ["suppress-target", "fp", "anp", "nc", "ibau", "basicft", "nad", "actft", "ours", "ours-proj"]
"""The field's defenses (Fine-Pruning, ANP, Neural Cleanse, I-BAU; docs/baselines.md, "The field's
defenses") beside the supplement's baselines, ours, ours-proj and the null row; run once per
attack and data set (``--attack badnets|blend|sig|wanet|lc``, ``--dataset``; docs/attacks.md for
each attack's recipe)."""

SWEEPS: tuple[Sweep, ...] = (
    Sweep("field", "the field's defenses (fp, anp, nc, ibau) beside the baselines, ours, ours-proj and the null row, "
          "n = 50 and 500", FIELD_ROWS, [50, 500]),
    Sweep("class-preserving", "ours-proj (class-preserving edit) under each threat model and as first released, beside ours, actFT, NAD "
          "and the null row, n = 50",
          CLASS_PRESERVING_ROWS, [50]),
    Sweep("table7", "Table 7: every method at n = 5, 50, 500, 5000 (sizes above the pool are dropped)",
          TABLE7_ROWS, [5, 50, 500, 5000]),
    Sweep("table8", "Table 8: repair learning rate η, with the trigger and with the target label only", _table8_rows(), [500]),
    Sweep("table9", "Table 9: Score for α, β ∈ {−1, 0, 1}, with the trigger and with the target label only", _table9_rows(), [500]),
    Sweep("table10", "Table 10: Score per backdoor target class 0–9",
          ["suppress-target", "actft", "baeraser", "ours", "basicft", "nad", "ours:knowledge=target"], [500],
          list(range(10))),
    Sweep("figure4", "Figure 4: λ × γ × BN mode, with the trigger and with the target label only", _figure4_rows(), [500]),
)


@bdtool.hookimpl
def bdtool_register_sweeps(register: Callable[..., None]) -> None:
    for sweep in SWEEPS:
        register(sweep)
