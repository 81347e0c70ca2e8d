"""Golden tests of a rendered comparison summary (core/experiment/report.py).

A small, fixed ``Summary`` is built by hand (no defense runs) and rendered as Markdown, CSV, JSON
(``write_report``; the plots are not compared) and the terminal text table; each rendering is
compared with the expected file under ``tests/golden/``.

Regenerating the expected files after an intended format change::

    BDTOOL_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_report.py

With ``BDTOOL_UPDATE_GOLDEN=1`` the golden tests rewrite ``tests/golden/summary.*`` instead of
comparing (they still run the fact checks below). Review the diff of tests/golden/ before
committing it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import pytest

from bdtool.core.experiment import report
from bdtool.core.experiment.report import Stat, Summary, SummaryRow, format_markdown, format_text_table, write_report

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("BDTOOL_UPDATE_GOLDEN") == "1"
NAN = float("nan")


def stats(score, asr, acc, ctca, min_class_acc, time_s) -> dict[str, Stat]:
    return {"score": score, "asr": asr, "acc": acc, "ctca": ctca, "min_class_acc": min_class_acc, "time_s": time_s}


def table_columns() -> dict:
    """The six columns of the supplement's Table 7, given explicitly (``Summary.columns``)."""
    column = report.Column
    return {"columns": [column("score", "Score", True, 1.0), column("asr", "ASR", False, 100.0),
                        column("acc", "ACC", True, 100.0), column("ctca", "CTCA", True, 100.0),
                        column("min_class_acc", "MinClass", True, 100.0), column("time_s", "Time s", False, 1.0)]}


def fixed_summary() -> Summary:
    before = SummaryRow("Before", None, stats(Stat(NAN, NAN), Stat(0.98, 0.0), Stat(0.95, 0.0), Stat(0.96, 0.0),
                                              Stat(0.90, 0.0), Stat(NAN, 0.0)), 1, 0)
    # Best per column among the defense rows: Score, ASR, ACC, CTCA from "Alpha"; MinClass and
    # Time from "Beta" (which also lost one of its three seeds).
    alpha = SummaryRow("Alpha", 5, stats(Stat(92.5, 1.25), Stat(0.02, 0.01), Stat(0.93, 0.005), Stat(0.91, 0.02),
                                         Stat(0.80, 0.03), Stat(1.5, 0.25)), 3, 0, knowledge="trigger")
    beta = SummaryRow("Beta", 5, stats(Stat(40.0, 10.0), Stat(0.50, 0.1), Stat(0.90, 0.01), Stat(0.85, 0.05),
                                       Stat(0.85, 0.02), Stat(0.125, 0.0)), 2, 1, ["RuntimeError: out of luck"],
                      knowledge="none", class_removed=True)
    broken = SummaryRow("Broken", 5, stats(*[Stat(NAN, NAN)] * 6), 0, 3, ["ValueError: always fails"])
    meta = {"dataset": "digits", "model": "small-cnn", "attack": "badnets", "target": 0, "poison_rate": 0.05,
            "samples": [5], "seeds": 3, "victim_run_id": "0123abcd", "victim_hash": "feedbeef"}
    outcomes = [{"label": "Alpha", "n": 5, "seed": 0, "status": "FINISHED", "score": 92.5},
                {"label": "Broken", "n": 5, "seed": 0, "status": "FAILED", "error": "ValueError: always fails"}]
    title = "digits / small-cnn / badnets (target 0), mean ± std over 3 seed(s); ASR, ACC, CTCA, MinClass in %"
    return Summary(title, before, [alpha, beta, broken], meta, outcomes, **table_columns())


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing; run with BDTOOL_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, (f"{name} differs from tests/golden/{name}; if the change is intended, "
                                "regenerate with BDTOOL_UPDATE_GOLDEN=1")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("report")
    # The PNG plots are not compared; skip drawing them (matplotlib is the slow part).
    original = report.plot
    report.plot = lambda summary, folder: {}
    try:
        paths = write_report(fixed_summary(), folder)
    finally:
        report.plot = original
    return {key: Path(value) for key, value in paths.items()}


# --------------------------------------------------------------------------- golden files


def test_markdown_golden():
    check_golden("summary.md", format_markdown(fixed_summary()))


def test_text_table_golden():
    check_golden("summary.txt", format_text_table(fixed_summary()) + "\n")


def test_written_markdown_is_format_markdown(written):
    assert written["markdown"].read_text(encoding="utf-8") == format_markdown(fixed_summary())


def test_csv_golden(written):
    check_golden("summary.csv", written["csv"].read_text(encoding="utf-8"))


def test_json_golden(written):
    check_golden("summary.json", written["json"].read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the facts, checked directly


def markdown_rows(text: str) -> dict[str, list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    out = {"header": header}
    for line in rows[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells
    return out


def test_markdown_bolds_the_best_value_per_column_and_nothing_else():
    rows = markdown_rows(format_markdown(fixed_summary()))
    header = rows["header"]
    col = {name.split(" ")[0]: header.index(name) for name in header}
    alpha, beta = rows["Alpha"], rows["Beta [class removed] (1 failed)"]
    for key in ("Score", "ASR", "ACC", "CTCA"):
        assert alpha[col[key]].startswith("**") and alpha[col[key]].endswith("**"), key
        assert "**" not in beta[col[key]], key
    for key in ("MinClass", "Time"):
        assert beta[col[key]].startswith("**"), key
        assert "**" not in alpha[col[key]], key
    assert alpha[col["Score"]] == "**92.50 ± 1.25**"
    assert alpha[col["ASR"]] == "**2.00 ± 1.00**"  # fractions shown in %; lower ASR is better
    assert beta[col["Time"]] == "**0.12 ± 0.00**" or beta[col["Time"]] == "**0.13 ± 0.00**"
    assert not any("**" in cell for cell in rows["Before"])  # the victim is never "best"
    assert not any("**" in cell for cell in rows["Broken"])


def test_failed_rows_say_failed_and_a_failed_seed_is_counted():
    rows = markdown_rows(format_markdown(fixed_summary()))
    assert rows["Broken"][2:] == ["failed"] * 6
    assert "Beta [class removed] (1 failed)" in rows and "Alpha" in rows
    assert "failed" not in " ".join(rows["Alpha"])
    text = format_text_table(fixed_summary())
    broken_line = next(line for line in text.splitlines() if line.startswith("Broken"))
    assert broken_line.split().count("failed") == 6
    assert any(line.startswith("Beta [class removed] (1 failed)") for line in text.splitlines())


def test_csv_header_lists_the_columns(written):
    rows = list(csv.reader(io.StringIO(written["csv"].read_text(encoding="utf-8"))))
    header = rows[0]
    assert header[:2] == ["label", "n"] and {"seeds_ok", "seeds_failed"} <= set(header)
    for key in ("score", "asr", "acc", "ctca", "min_class_acc", "time_s"):
        assert f"{key}_mean" in header and f"{key}_std" in header
    by_label = {r[0]: dict(zip(header, r)) for r in rows[1:]}
    assert list(by_label) == ["Before", "Alpha", "Beta", "Broken"]
    assert by_label["Before"]["n"] == ""
    assert float(by_label["Alpha"]["asr_mean"]) == pytest.approx(0.02)  # fractions, not %
    assert (by_label["Beta"]["seeds_ok"], by_label["Beta"]["seeds_failed"]) == ("2", "1")
    assert by_label["Broken"]["acc_mean"] == ""  # a missing number is an empty cell, as null in the JSON


def test_json_marks_failed_rows_and_keeps_errors(written):
    data = json.loads(written["json"].read_text(encoding="utf-8"))
    rows = {r["label"]: r for r in data["rows"]}
    assert rows["Broken"]["status"] == "failed" and rows["Broken"]["acc_mean"] is None
    assert rows["Broken"]["errors"] == ["ValueError: always fails"]
    assert rows["Beta"]["status"] == "ok" and rows["Beta"]["seeds_failed"] == 1
    assert "errors" not in rows["Alpha"]
    assert data["before"]["score_mean"] is None and data["before"]["acc_mean"] == pytest.approx(0.95)
    assert data["meta"]["victim_run_id"] == "0123abcd" and len(data["runs"]) == 2


def test_a_row_that_removed_the_class_is_marked_everywhere(written):
    text = report.format_text_table(fixed_summary())
    marked = [line for line in text.splitlines() if report.CLASS_REMOVED_MARK in line]
    assert len(marked) == 1 and marked[0].startswith("Beta")
    rows = {r["label"]: r for r in json.loads(written["json"].read_text())["rows"]}
    assert rows["Beta"]["class_removed"] is True and rows["Alpha"]["class_removed"] is False
    assert (rows["Alpha"]["knowledge"], rows["Beta"]["knowledge"]) == ("trigger", "none")
    with written["csv"].open() as fh:
        by_label = {r["label"]: r for r in csv.DictReader(fh)}
    assert (by_label["Beta"]["class_removed"], by_label["Alpha"]["class_removed"]) == ("True", "False")
