"""A sweep over victims, summarised per victim kind (``bdtool sweep trigger-free``; docs/method.md,
"Unknown backdoor"): for every row, the mean over victims of each victim's mean over draws of D_U,
so that one lucky victim cannot stand for the kind. Works on the comparisons' payloads (the dicts
``bdtool compare --json`` prints), so it needs nothing but what was reported.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from bdtool.core.experiment.report import aligned_table

FIELDS = ("asr", "acc", "ctca", "class_score", "found", "flagged", "time_s")
PERCENT = {"asr", "acc", "ctca", "found", "flagged", "acc_ratio", "ctca_ratio"}


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.mean(kept) if kept else None


def victim_summary(comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (victim kind, row label), in the order first seen: the number of victims and
    the mean over them of ASR, ACC, CTCA, ClassScore, the detection share (found: flagged at the
    victim's target; flagged: on clean victims, flagged at all), the time, and ACC and CTCA as
    ratios to the victim before defense."""
    groups: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for payload in comparisons:
        kind = (payload.get("victim") or {}).get("kind", "victim")
        before = payload.get("before") or {}
        for row in payload.get("rows") or []:
            if row.get("status") != "ok":
                continue
            groups.setdefault((kind, row["label"]), []).append((row, before))
    out = []
    for (kind, label), members in groups.items():
        entry: dict[str, Any] = {"kind": kind, "row": label, "victims": len(members)}
        for key in FIELDS:
            entry[key] = _mean([row.get(f"{key}_mean") for row, _ in members])
        for key in ("acc", "ctca"):
            entry[f"{key}_ratio"] = _mean([row[f"{key}_mean"] / before[f"{key}_mean"]
                                           for row, before in members
                                           if row.get(f"{key}_mean") is not None and before.get(f"{key}_mean")])
        out.append(entry)
    return out


def format_victim_summary(summary: list[dict[str, Any]], dataset: str) -> str:
    header = ["victims", "row", "ASR", "ACC", "CTCA", "ACC/before", "CTCA/before", "ClassScore", "found / flagged",
              "time s"]
    lines = [[f"{e['kind']} ({e['victims']})", e["row"], *[_cell(e, k) for k in ("asr", "acc", "ctca", "acc_ratio",
                                                                                   "ctca_ratio", "class_score")],
              _cell(e, "flagged" if e["kind"] == "clean" else "found"), _cell(e, "time_s")] for e in summary]
    title = (f"{dataset}: mean over victims of the mean over draws of D_U (percent except ClassScore and time; "
             "found = flagged at the victim's target, flagged = a clean victim flagged at all)")
    return "\n".join([title, *aligned_table(header, lines, left=len(header))])


def _cell(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if value is None:
        return "-"
    return f"{value * 100:.1f}" if key in PERCENT else f"{value:.2f}"
