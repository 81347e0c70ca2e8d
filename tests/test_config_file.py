"""``--config FILE``: a whole comparison in TOML, logged with its run, written back by ``bdtool show
--config``; the same file gives the same comparison (cli/config_file.py)."""

from __future__ import annotations

import json
import tomllib
import uuid

import pytest
from click.testing import CliRunner
from hypothesis import given, strategies as st
from mlflow.tracking import MlflowClient

from bdtool.cli import main
from bdtool.cli.config_file import _toml_value
from bdtool.core import tracking

CONFIG = '''
defense = ["suppress-target", "ours"]
samples = [5]
seeds = 1
poison_rate = 0.05
'''


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_a_comparison_from_a_file_is_logged_and_written_back_as_the_same_comparison(mlflow_store, digits_victim,
                                                                                     tmp_path):
    experiment = f"config-{uuid.uuid4().hex[:6]}"
    (tmp_path / "c.toml").write_text(CONFIG)
    base = ("--tracking-uri", mlflow_store, "--experiment", experiment)
    first = invoke("compare", "--config", str(tmp_path / "c.toml"), "--device", "cpu", "--no-log-models", "--json",
                   *base)
    assert first.exit_code == 0, first.output
    payload = json.loads(first.stdout)
    assert [r["label"] for r in payload["rows"]] == ["Null: suppress target (target label)", "Ours (trigger)"]
    assert payload["meta"]["samples"] == [5] and payload["meta"]["seeds"] == 1
    shown = invoke("show", payload["parent_run_id"], "--config", "--tracking-uri", mlflow_store)
    assert shown.exit_code == 0, shown.output
    written = tomllib.loads(shown.stdout)
    assert written["defense"] == ["suppress-target", "ours"] and written["samples"] == [5] and written["seeds"] == 1
    assert written["dataset"] == "digits" and written["attack"] == "badnets" and written["poison-rate"] == 0.05
    (tmp_path / "back.toml").write_text(shown.stdout)
    again = invoke("compare", "--config", str(tmp_path / "back.toml"), "--device", "cpu", "--no-log-models",
                   "--json", *base)
    assert again.exit_code == 0, again.output
    client = MlflowClient(tracking_uri=mlflow_store)
    keys = {client.get_run(json.loads(r.stdout)["parent_run_id"]).data.tags[tracking.COMPARISON_KEY_TAG]
            for r in (first, again)}
    assert len(keys) == 1


def test_an_option_on_the_command_line_wins_over_the_file(mlflow_store, tmp_path):
    (tmp_path / "c.toml").write_text(CONFIG)
    result = invoke("compare", "--config", str(tmp_path / "c.toml"), "--seeds", "2", "--samples", "7", "--dry-run",
                    "--json", "--tracking-uri", mlflow_store)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["seeds"] == 2 and plan["samples"] == [7] and plan["runs"] == 4


@pytest.mark.parametrize("text, says", [
    ("bogus = 1", "unknown key 'bogus'"),
    ("seeds = [1, 2]", "'seeds' takes one value, not a list"),
    ("seeds = 0", "'--seeds': 0 is not in the range"),
    ("defense = {a = 1}", "is a table"),
    ("seeds = ", "is not valid TOML"),
])
def test_a_bad_file_is_one_line_and_exit_2(mlflow_store, tmp_path, text, says):
    (tmp_path / "c.toml").write_text(text)
    result = invoke("compare", "--config", str(tmp_path / "c.toml"), "--tracking-uri", mlflow_store)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and says in lines[0], result.output


@pytest.mark.parametrize("name, says", [("none.toml", "is not a regular file"), ("/dev/zero", "is not a regular file"),
                                        ("big.toml", "larger than 1024 KiB")])
def test_a_file_that_cannot_be_a_config_is_one_line(mlflow_store, tmp_path, name, says):
    """/dev/zero was read forever (the deep fuzz ran out of memory on it): only a regular file of at
    most 1 MiB is read."""
    path = tmp_path / name if not name.startswith("/") else name
    if name == "big.toml":
        path.write_text("# " + "x" * (1 << 20) + "\n")
    result = invoke("compare", "--config", str(path), "--tracking-uri", mlflow_store)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and says in lines[0], result.output


@given(st.one_of(st.text(max_size=40), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False),
                 st.booleans(), st.lists(st.text(max_size=10), max_size=4)))
def test_every_value_the_writer_writes_reads_back_the_same(value):
    assert tomllib.loads(f"k = {_toml_value(value)}")["k"] == value
