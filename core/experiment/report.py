"""Summary tables and plots of a comparison, shaped like the supplement's Table 7:
rows = defense label (with its knowledge) × n, columns = the chosen registered metrics and the
defense's time (mean ± std over seeds). Rows that removed the target class are marked."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from bdtool.core.experiment.evaluation import compute_metrics, to_mlflow_units
from bdtool.core.experiment.output import atomic_target, write_text_atomic
from bdtool.core.experiment.rows import RowSpec
from bdtool.core.interfaces import ALL_TO_ALL
from bdtool.core.tracking.models import label_slug

if TYPE_CHECKING:
    from bdtool.core.experiment.compare_config import CompareConfig
    from bdtool.core.experiment.tasks import RunOutcome
    from bdtool.core.experiment.victim_spec import Victim


def row_sizes(row: RowSpec, samples: Sequence[int], victim: "Victim") -> list[int]:
    """The n of each run of ``row``: the requested sample sizes, or, for a defense that trains on
    the training set and ignores D_U (retraining), one run whose n is the clean training-set size
    (the supplement's Table 7 lists "Retraining 47500")."""
    if row.defense_cls.needs_training_set:
        return [len(victim.data.train) - len(victim.data.poisoned_indices)]
    return list(samples)

@dataclass(frozen=True)
class Column:
    """One table column: a registered metric, or the defense's time."""

    key: str
    header: str
    higher_is_better: bool
    scale: float = 1.0
    """100 for fractions shown in percent."""
    plot: str = ""
    """The metric's ``Metric.plot``: its place in the plots."""

    @property
    def title(self) -> str:
        return f"{self.header} ({'↑' if self.higher_is_better else '↓'})"


TIME_COLUMN = Column("time_s", "Time s", False, 1.0)
FOUND_COLUMN = Column("found", "Found", True, 100.0)
"""On a backdoored victim: the share of seeds whose defense flagged a backdoor at the victim's target."""
FLAGGED_COLUMN = Column("flagged", "Flagged", False, 100.0)
"""On a clean victim: the share of seeds whose defense flagged a backdoor at all (a false alarm)."""
DETECTION_COLUMNS = (FOUND_COLUMN, FLAGGED_COLUMN)
CLASS_REMOVED_FRACTION = 0.5
"""A row whose mean CTCA is below this fraction of the victim's removed the target class with
the backdoor; tables mark it (docs/method.md, "Honest scoring")."""
CLASS_REMOVED_MARK = "[class removed]"


def metric_columns(metric_classes: Sequence[Any]) -> list[Column]:
    """The table columns of ``metric_classes`` (Metric subclasses), in order, then the time."""
    cols = [Column(m.name, m.header or m.name, m.higher_is_better, 100.0 if m.percent else 1.0,
                   getattr(m, "plot", ""))
            for m in metric_classes]
    return cols + [TIME_COLUMN]


@dataclass
class Stat:
    mean: float
    std: float

    def fmt(self, scale: float = 1.0) -> str:
        if math.isnan(self.mean):
            return "-"
        return f"{self.mean * scale:.2f} ± {self.std * scale:.2f}"


def stat(values: Sequence[float | None]) -> Stat:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return Stat(float("nan"), float("nan"))
    return Stat(statistics.fmean(kept), statistics.pstdev(kept) if len(kept) > 1 else 0.0)


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else value


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/inf float replaced by None: JSON has no NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


@dataclass
class SummaryRow:
    label: str
    n: int | None
    stats: dict[str, Stat]
    seeds_ok: int
    seeds_failed: int
    errors: list[str] = field(default_factory=list)
    knowledge: str = ""
    """trigger | target | none | oracle (empty for "Before")."""
    class_removed: bool = False
    """Mean CTCA below CLASS_REMOVED_FRACTION of the victim's."""

    @property
    def failed(self) -> bool:
        return self.seeds_ok == 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "n": self.n, "knowledge": self.knowledge or None,
                               "seeds_ok": self.seeds_ok, "seeds_failed": self.seeds_failed,
                               "status": "failed" if self.failed else "ok", "class_removed": self.class_removed}
        for key, s in self.stats.items():
            out[f"{key}_mean"] = _none_if_nan(s.mean)
            out[f"{key}_std"] = _none_if_nan(s.std)
        if self.errors:
            out["errors"] = self.errors
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SummaryRow":
        """The inverse of ``to_dict`` (a row of a logged ``summary.json``)."""
        nan = float("nan")
        stats = {key[:-len("_mean")]: Stat(nan if value is None else float(value),
                                           nan if data.get(key[:-len("_mean")] + "_std") is None
                                           else float(data[key[:-len("_mean")] + "_std"]))
                 for key, value in data.items() if key.endswith("_mean")}
        return cls(data["label"], data.get("n"), stats, int(data.get("seeds_ok", 0)), int(data.get("seeds_failed", 0)),
                   list(data.get("errors") or []), data.get("knowledge") or "", bool(data.get("class_removed", False)))


@dataclass
class Summary:
    title: str
    before: SummaryRow
    rows: list[SummaryRow]
    meta: dict[str, Any]
    outcomes: list[dict[str, Any]]
    columns: list[Column] = field(default_factory=list)
    plotted: list[Column] = field(default_factory=list)
    """Every registered metric that declares a ``Metric.plot``, shown in the table or not."""

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "meta": self.meta, "columns": [c.key for c in self.columns],
                "before": self.before.to_dict(), "rows": [r.to_dict() for r in self.rows], "runs": self.outcomes,
                "units": "metrics marked percent in `bdtool list metrics` (acc, asr, ctca, min_class_acc, der) "
                         "as fractions; score and class_score in points (0-100); times in seconds",
                "class_removed": f"mean CTCA below {CLASS_REMOVED_FRACTION:g} x the victim's CTCA"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], metric_classes: Sequence[Any] = ()) -> "Summary":
        """The inverse of ``to_dict`` (a logged ``summary.json``, as ``bdtool show`` reads it).
        ``summary.json`` names its columns by key only: their headers, direction and scale come from
        ``metric_classes`` (the registered Metric classes); a key no longer registered gets a plain
        column named by its key."""
        known = {c.key: c for c in [*metric_columns(metric_classes), *DETECTION_COLUMNS]}
        columns = [known.get(key, Column(key, key, True)) for key in data.get("columns", [])]
        return cls(data["title"], SummaryRow.from_dict(data["before"]), [SummaryRow.from_dict(r) for r in data["rows"]],
                   dict(data.get("meta") or {}), list(data.get("runs") or []), columns,
                   [c for c in metric_columns(metric_classes) if c.plot])


def aggregate(victim: "Victim", outcomes: list["RunOutcome"], config: "CompareConfig",
              metric_classes: Sequence[Any], shown: Sequence[Any] | None = None) -> Summary:
    """Mean ± std over seeds of every metric in ``metric_classes`` (all registered metrics) and
    the time, per (row, n); the table shows ``shown`` (default: all of them)."""
    before = victim.before
    before_values, _ = compute_metrics(metric_classes, before, None)
    before_stats = {key: Stat(value, 0.0) for key, value in before_values.items()}
    before_stats["time_s"] = Stat(victim.train_seconds if not victim.reused else float("nan"), 0.0)
    before_row = SummaryRow("Before", None, before_stats, 1, 0)
    rows: list[SummaryRow] = []
    keys = [m.name for m in metric_classes]
    for row in config.rows:
        for n in row_sizes(row, config.samples, victim):
            group = [o for o in outcomes if o.label == row.label and o.n == n]
            ok = [o for o in group if o.result is not None]
            stats = {key: stat([o.metrics.get(key, float("nan")) for o in ok]) for key in keys}
            stats["time_s"] = stat([o.defense_time_s + (o.repair_time_s or 0.0) for o in ok])
            ctca = stat([o.result.ctca for o in ok if o.result is not None]).mean
            detection = detection_share(ok, victim.spec)
            if detection is not None:
                stats[detection[0].key] = detection[1]
            removed = bool(ok) and before.ctca > 0 and ctca < CLASS_REMOVED_FRACTION * before.ctca
            rows.append(SummaryRow(row.label, n, stats, len(ok), len(group) - len(ok),
                                   sorted({o.error for o in group if o.error}), row.knowledge_label, removed))
    spec = victim.spec
    meta = {"dataset": spec.dataset, "model": spec.model, "attack": spec.attack, "target": spec.target,
            "poison_rate": spec.poison_rate, "victim_kind": spec.victim_kind(), "samples": config.samples, "seeds": config.seeds,
            "victim_run_id": victim.run_id, "victim_hash": victim.config_hash}
    columns = metric_columns(shown or metric_classes)
    detection_column = FOUND_COLUMN if spec.backdoored else FLAGGED_COLUMN
    if any(detection_column.key in r.stats for r in rows):
        columns.insert(len(columns) - 1, detection_column)  # before the time
    percent = [m.header or m.name for m in (shown or metric_classes) if m.percent]
    percent += [c.header for c in columns if c in DETECTION_COLUMNS]
    all_to_all = spec.target == ALL_TO_ALL
    victim_text = ((f"{spec.attack} (all-to-all: y → y+1 mod K; ASR per source class, no CTCA, no null row)"
                    if all_to_all else f"{spec.attack} (target {spec.target})") if spec.backdoored else
                   f"clean victim (no backdoor; ASR = its natural rate under the {spec.attack} trigger toward "
                   f"{'y+1 mod K' if all_to_all else f'class {spec.target}'})")
    title = (f"{spec.dataset} / {spec.model} / {victim_text}, "
             f"mean ± std over {config.seeds} seed(s); {', '.join(percent)} in %")
    return Summary(title, before_row, rows, meta, [o.to_dict() for o in outcomes], columns,
                   [c for c in metric_columns(metric_classes) if c.plot])


def row_key(label: str, n: int | None) -> str:
    """A row's prefix in the parent run's metrics: its label as ``label_slug`` makes it, then
    ``.n<N>`` (``Ours-proj (none)``, n = 50 -> ``ours-proj_none.n50``)."""
    slug = label_slug(label)
    return slug if n is None else f"{slug}.n{n}"


def summary_metrics(summary: Summary, metric_classes: Sequence[Any] = ()) -> dict[str, float]:
    """Every row's mean and std of every metric (and the time) as the comparison run's metrics,
    ``<row_key>.<metric>_mean`` / ``_std``, in MLflow's units (``Metric.mlflow_scale``: fractions):
    sorted by name they group by row, then n, then metric, and ``mlflow.search_runs`` can filter and
    order comparisons on them (docs/ui.md). Undefined values (NaN) are left out."""
    out: dict[str, float] = {}
    for row in summary.rows:
        for part in ("mean", "std"):
            values = to_mlflow_units(metric_classes, {key: getattr(s, part) for key, s in row.stats.items()})
            for key, value in values.items():
                if value == value and not math.isinf(value):
                    out[f"{row_key(row.label, row.n)}.{key}_{part}"] = float(value)
    return out


def summary_table(summary: Summary) -> dict[str, list[Any]]:
    """The comparison's table as columns (row, knowledge, n, seeds, then each metric's mean and std),
    for ``mlflow.log_table``: the runs page shows it as a table artifact."""
    keys = sorted({key for row in summary.rows for key in row.stats})
    table: dict[str, list[Any]] = {"row": [], "knowledge": [], "n": [], "seeds_ok": [], "seeds_failed": []}
    table.update({f"{key}_{part}": [] for key in keys for part in ("mean", "std")})
    for row in summary.rows:
        table["row"].append(row.label)
        table["knowledge"].append(row.knowledge)
        table["n"].append(row.n)
        table["seeds_ok"].append(row.seeds_ok)
        table["seeds_failed"].append(row.seeds_failed)
        for key in keys:
            s = row.stats.get(key)
            for part in ("mean", "std"):
                value = getattr(s, part) if s is not None else float("nan")
                table[f"{key}_{part}"].append(None if value != value else value)
    return table


def detection_share(outcomes: Sequence["RunOutcome"], spec: Any) -> tuple[Column, Stat] | None:
    """The detection column's cell for one row: over the seeds whose defense reported a verdict,
    the share flagged at the victim's target (backdoored victim) or flagged at all (clean victim, or
    an all-to-all backdoor, whose every class is a target);
    None when no seed reported one."""
    verdicts = [o.detection for o in outcomes if o.detection is not None]
    if not verdicts:
        return None
    if spec.backdoored and spec.target == ALL_TO_ALL:  # every class is a target: any flagged class is one
        return FOUND_COLUMN, stat([float(bool(d["detected"])) for d in verdicts])
    if spec.backdoored:
        return FOUND_COLUMN, stat([float(bool(d["detected"]) and d.get("target") == spec.target) for d in verdicts])
    return FLAGGED_COLUMN, stat([float(bool(d["detected"])) for d in verdicts])


def _best(rows: list[SummaryRow], key: str, higher: bool) -> float | None:
    values = [r.stats[key].mean for r in rows if not r.failed and key in r.stats and not math.isnan(r.stats[key].mean)]
    if not values:
        return None
    return max(values) if higher else min(values)


def table_cells(summary: Summary, bold: bool = False) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "n"] + [c.title for c in summary.columns]
    best = {c.key: _best(summary.rows, c.key, c.higher_is_better) for c in summary.columns}
    lines = []
    for r in [summary.before] + summary.rows:
        cells = [r.label, "-" if r.n is None else str(r.n)]
        for c in summary.columns:
            if r.failed:
                cells.append("failed")
                continue
            value = r.stats.get(c.key, Stat(float("nan"), float("nan")))
            text = value.fmt(c.scale)
            is_best = r is not summary.before and best[c.key] is not None and value.mean == best[c.key]
            cells.append(f"**{text}**" if bold and is_best else text)
        if r.class_removed and not r.failed:
            cells[0] += f" {CLASS_REMOVED_MARK}"
        if r.seeds_failed and not r.failed:
            cells[0] += f" ({r.seeds_failed} failed)"
        lines.append(cells)
    return header, lines


def aligned_table(header: list[str], lines: list[list[str]], left: int = 2) -> list[str]:
    """A plain-text table: the header, a rule and the lines, columns padded to their widest cell;
    the first ``left`` columns aligned left, the others right."""
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(row) for row in lines]


def format_text_table(summary: Summary) -> str:
    header, lines = table_cells(summary)
    return "\n".join([summary.title, *aligned_table(header, lines)])


def format_markdown(summary: Summary) -> str:
    header, lines = table_cells(summary, bold=True)
    out = [f"**{summary.title}** (best per column in bold; {CLASS_REMOVED_MARK}: mean CTCA below "
           f"{CLASS_REMOVED_FRACTION:g} × the victim's, the target class went with the backdoor)", "",
           "| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in lines]
    return "\n".join(out) + "\n"


def write_report(summary: Summary, folder: Path) -> dict[str, str]:
    """Write summary.md/.csv/.json and the plots into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "summary.md", "csv": folder / "summary.csv", "json": folder / "summary.json"}
    # Each file is written in full beside its destination, then renamed over it (output.py).
    write_text_atomic(paths["markdown"], format_markdown(summary))
    write_text_atomic(paths["json"], json.dumps(json_safe(summary.to_dict()), indent=2, default=str, allow_nan=False))
    fh = io.StringIO(newline="")
    writer = csv.writer(fh)
    keys = [c.key for c in summary.columns]
    writer.writerow(["label", "n", "knowledge", "seeds_ok", "seeds_failed", "class_removed"]
                    + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
    for r in [summary.before] + summary.rows:
        cells = [r.stats.get(k, Stat(float("nan"), float("nan"))) for k in keys]
        writer.writerow([r.label, "" if r.n is None else r.n, r.knowledge, r.seeds_ok, r.seeds_failed,
                         r.class_removed] + ["" if math.isnan(v) else v for s in cells for v in (s.mean, s.std)])
    write_text_atomic(paths["csv"], fh.getvalue(), newline="")
    paths.update(plot(summary, folder))
    return {k: str(v) for k, v in paths.items()}


def plot(summary: Summary, folder: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    rows = [r for r in summary.rows if not r.failed]
    bars = [c for c in summary.plotted if c.plot.startswith("bar")]
    curves = [c for c in summary.plotted if c.plot == "curve"]
    if not rows or not bars or not all(c.key in r.stats for r in rows + [summary.before] for c in bars + curves):
        return out  # the metrics that declare a plot (Metric.plot) are missing: no plot
    labels = [f"{r.label}\nn={r.n}" for r in rows]
    width = 0.81 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4.5))
    for i, c in enumerate(bars):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [c.scale * r.stats[c.key].mean for r in rows], width,
               yerr=[c.scale * r.stats[c.key].std for r in rows], label=c.header, capsize=2)
    for c in bars:
        if c.plot == "bar+before":
            ax.axhline(c.scale * summary.before.stats[c.key].mean, color="grey", linestyle=":", linewidth=1,
                       label=f"{c.header} before")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(summary.title, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out["bar_chart"] = folder / f"{'_'.join(c.key for c in bars)}.png"
    with atomic_target(out["bar_chart"]) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    ns = sorted({r.n for r in rows if r.n is not None})
    for c in curves if len(ns) > 1 else []:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label in dict.fromkeys(r.label for r in rows):
            series = sorted(((r.n, r.stats[c.key]) for r in rows if r.label == label), key=lambda p: p[0])
            ax.errorbar([n for n, _ in series], [c.scale * s.mean for _, s in series],
                        yerr=[c.scale * s.std for _, s in series], marker="o", capsize=2, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("unlearning samples n")
        ax.set_ylabel(c.header)
        ax.legend(fontsize=7)
        ax.set_title(f"{c.header} vs n", fontsize=9)
        fig.tight_layout()
        out[f"{c.key}_vs_n"] = folder / f"{c.key}_vs_n.png"
        with atomic_target(out[f"{c.key}_vs_n"]) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)
    return out
