"""Summary tables and plots of a comparison, shaped like the supplement's Table 7:
rows = defense label × n, columns Score, ASR, ACC, CTCA, Time (mean ± std over seeds, in %)."""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from bdtool.core.experiment.rows import RowSpec

if TYPE_CHECKING:
    from bdtool.core.experiment.runner import CompareConfig, RunOutcome
    from bdtool.core.experiment.victim import Victim


def row_sizes(row: RowSpec, samples: Sequence[int], victim: "Victim") -> list[int]:
    """The n of each run of ``row``: the requested sample sizes, or, for a defense that trains on
    the training set and ignores D_U (retraining), one run whose n is the clean training-set size
    (the supplement's Table 7 lists "Retraining 47500")."""
    if row.defense_cls.needs_training_set:
        return [len(victim.data.train) - len(victim.data.poisoned_indices)]
    return list(samples)

# column key, header, higher is better, scale to percent
COLUMNS: tuple[tuple[str, str, bool, float], ...] = (
    ("score", "Score (↑)", True, 1.0),
    ("asr", "ASR (↓)", False, 100.0),
    ("acc", "ACC (↑)", True, 100.0),
    ("ctca", "CTCA (↑)", True, 100.0),
    ("min_class_acc", "MinClass (↑)", True, 100.0),
    ("time_s", "Time s (↓)", False, 1.0),
)


@dataclass
class Stat:
    mean: float
    std: float

    def fmt(self, scale: float = 1.0) -> str:
        if math.isnan(self.mean):
            return "-"
        return f"{self.mean * scale:.2f} ± {self.std * scale:.2f}"


def stat(values: Sequence[float]) -> Stat:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return Stat(float("nan"), float("nan"))
    return Stat(statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0)


@dataclass
class SummaryRow:
    label: str
    n: int | None
    stats: dict[str, Stat]
    seeds_ok: int
    seeds_failed: int
    errors: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.seeds_ok == 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "n": self.n, "seeds_ok": self.seeds_ok,
                               "seeds_failed": self.seeds_failed, "status": "failed" if self.failed else "ok"}
        for key, s in self.stats.items():
            out[f"{key}_mean"] = None if math.isnan(s.mean) else s.mean
            out[f"{key}_std"] = None if math.isnan(s.std) else s.std
        if self.errors:
            out["errors"] = self.errors
        return out


@dataclass
class Summary:
    title: str
    before: SummaryRow
    rows: list[SummaryRow]
    meta: dict[str, Any]
    outcomes: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "meta": self.meta, "before": self.before.to_dict(),
                "rows": [r.to_dict() for r in self.rows], "runs": self.outcomes,
                "units": "acc, asr, ctca, min_class_acc as fractions; score in points (0-100); times in seconds"}


def aggregate(victim: "Victim", outcomes: list["RunOutcome"], config: "CompareConfig") -> Summary:
    before = victim.before
    before_row = SummaryRow("Before", None, {
        "score": Stat(float("nan"), float("nan")), "asr": Stat(before.asr, 0.0), "acc": Stat(before.acc, 0.0),
        "ctca": Stat(before.ctca, 0.0), "min_class_acc": Stat(before.min_class_acc, 0.0),
        "time_s": Stat(victim.train_seconds if not victim.reused else float("nan"), 0.0)}, 1, 0)
    rows: list[SummaryRow] = []
    for row in config.rows:
        for n in row_sizes(row, config.samples, victim):
            group = [o for o in outcomes if o.label == row.label and o.n == n]
            ok = [o for o in group if o.result is not None]
            times = [o.defense_time_s + (o.repair_time_s or 0.0) for o in ok]
            rows.append(SummaryRow(row.label, n, {
                "score": stat([o.score for o in ok]),
                "asr": stat([o.result.asr for o in ok]),
                "acc": stat([o.result.acc for o in ok]),
                "ctca": stat([o.result.ctca for o in ok]),
                "min_class_acc": stat([o.result.min_class_acc for o in ok]),
                "time_s": stat(times),
            }, len(ok), len(group) - len(ok), sorted({o.error for o in group if o.error})))
    spec = victim.spec
    meta = {"dataset": spec.dataset, "model": spec.model, "attack": spec.attack, "target": spec.target,
            "poison_rate": spec.poison_rate, "samples": config.samples, "seeds": config.seeds,
            "victim_run_id": victim.run_id, "victim_hash": victim.config_hash}
    title = (f"{spec.dataset} / {spec.model} / {spec.attack} (target {spec.target}), "
             f"mean ± std over {config.seeds} seed(s); ASR, ACC, CTCA, MinClass in %")
    return Summary(title, before_row, rows, meta, [o.to_dict() for o in outcomes])


def _best(rows: list[SummaryRow], key: str, higher: bool) -> float | None:
    values = [r.stats[key].mean for r in rows if not r.failed and not math.isnan(r.stats[key].mean)]
    if not values:
        return None
    return max(values) if higher else min(values)


def table_cells(summary: Summary, bold: bool = False) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "n"] + [h for _, h, _, _ in COLUMNS]
    best = {key: _best(summary.rows, key, higher) for key, _, higher, _ in COLUMNS}
    lines = []
    for r in [summary.before] + summary.rows:
        cells = [r.label, "-" if r.n is None else str(r.n)]
        for key, _, _, scale in COLUMNS:
            if r.failed:
                cells.append("failed")
                continue
            text = r.stats[key].fmt(scale)
            is_best = r is not summary.before and best[key] is not None and r.stats[key].mean == best[key]
            cells.append(f"**{text}**" if bold and is_best else text)
        if r.seeds_failed and not r.failed:
            cells[0] += f" ({r.seeds_failed} failed)"
        lines.append(cells)
    return header, lines


def format_text_table(summary: Summary) -> str:
    header, lines = table_cells(summary)
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    out = [summary.title, fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(row) for row in lines]
    return "\n".join(out)


def format_markdown(summary: Summary) -> str:
    header, lines = table_cells(summary, bold=True)
    out = [f"**{summary.title}** (best per column in bold)", "", "| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in lines]
    return "\n".join(out) + "\n"


def write_report(summary: Summary, folder: Path) -> dict[str, str]:
    """Write summary.md/.csv/.json and the plots into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "summary.md", "csv": folder / "summary.csv", "json": folder / "summary.json"}
    paths["markdown"].write_text(format_markdown(summary))
    paths["json"].write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        keys = [k for k, _, _, _ in COLUMNS]
        writer.writerow(["label", "n", "seeds_ok", "seeds_failed"] + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
        for r in [summary.before] + summary.rows:
            writer.writerow([r.label, "" if r.n is None else r.n, r.seeds_ok, r.seeds_failed]
                            + [v for k in keys for v in (r.stats[k].mean, r.stats[k].std)])
    paths.update(plot(summary, folder))
    return {k: str(v) for k, v in paths.items()}


def plot(summary: Summary, folder: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    rows = [r for r in summary.rows if not r.failed]
    if not rows:
        return out
    labels = [f"{r.label}\nn={r.n}" for r in rows]
    metrics = [("asr", "ASR"), ("acc", "ACC"), ("ctca", "CTCA")]
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4.5))
    for i, (key, name) in enumerate(metrics):
        xs = [j + (i - 1) * width for j in range(len(rows))]
        ax.bar(xs, [100 * r.stats[key].mean for r in rows], width, yerr=[100 * r.stats[key].std for r in rows],
               label=name, capsize=2)
    ax.axhline(100 * summary.before.stats["acc"].mean, color="grey", linestyle=":", linewidth=1, label="ACC before")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(summary.title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out["bar_chart"] = folder / "asr_acc_ctca.png"
    fig.savefig(out["bar_chart"], dpi=120)
    plt.close(fig)
    ns = sorted({r.n for r in rows if r.n is not None})
    if len(ns) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label in dict.fromkeys(r.label for r in rows):
            series = sorted((r.n, r.stats["score"]) for r in rows if r.label == label)
            ax.errorbar([n for n, _ in series], [s.mean for _, s in series], yerr=[s.std for _, s in series],
                        marker="o", capsize=2, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("unlearning samples n")
        ax.set_ylabel("Score")
        ax.legend(fontsize=7)
        ax.set_title("Score vs n", fontsize=9)
        fig.tight_layout()
        out["score_vs_n"] = folder / "score_vs_n.png"
        fig.savefig(out["score_vs_n"], dpi=120)
        plt.close(fig)
    return out
