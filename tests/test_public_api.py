"""The public API for plugin authors (``bdtool.api``), the paths older docs showed, strict JSON,
the progress timer off a terminal, metric namespacing, and where components come from."""

from __future__ import annotations

import io
import json
import time

import conftest
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import bdtool.api as api
from bdtool.cli import main
from bdtool.core.experiment.progress import ProgressPrinter
from bdtool.core.experiment.runner import namespaced


def test_every_public_name_imports_and_is_the_internal_object():
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    import bdtool.core.errors as errors
    import bdtool.core.interfaces as interfaces

    # The paths the first docs showed keep working and give the very same classes.
    assert interfaces.Defense is api.Defense and interfaces.DefenseContext is api.DefenseContext
    assert errors.DefenseInputError is api.DefenseInputError
    assert api.hookimpl is __import__("bdtool").hookimpl


def _strict(text: str):
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


class Explodes(conftest.Explodes):
    name = "test-api-explode"
    message = "boom"


class LogsMetrics(api.Defense):
    name = "test-api-logs"
    label = "Logs"

    def apply(self, model, ctx):
        ctx.log_metric("steps", 3.0, None)
        ctx.log_metric("test-api-logs.already", 1.0, None)
        return model


@pytest.fixture
def defenses(register_defense):
    for cls in (Explodes, LogsMetrics):
        register_defense(cls)


def test_json_with_a_failed_row_is_strict_json_and_plugin_metrics_are_namespaced(defenses, mlflow_store,
                                                                                   digits_victim):
    result = CliRunner().invoke(main, ["compare", "--device", "cpu", "--tracking-uri", mlflow_store,
                                       "--experiment", "api-json", "--defense", Explodes.name, "--defense",
                                       LogsMetrics.name, "--samples", "5", "--seeds", "1", "--no-log-models",
                                       "--json"])
    assert result.exit_code == 3, result.output  # a row failed: exit 3, JSON still printed
    payload = _strict(result.stdout)
    failed, ok = payload["rows"]
    assert failed["status"] == "failed" and failed["score_mean"] is None and "boom" in failed["errors"][0]
    assert ok["status"] == "ok"
    run = next(r for r in payload["runs"] if r["defense"] == Explodes.name)
    assert run["defense_time_s"] is None and run["metrics"] == {}
    client = MlflowClient(tracking_uri=mlflow_store)
    exp = client.get_experiment_by_name("api-json")
    logged = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bdtool.defense") == LogsMetrics.name)
    assert logged.data.metrics["test-api-logs.steps"] == 3.0 and logged.data.metrics["test-api-logs.already"] == 1.0
    assert "steps" not in logged.data.metrics


def test_namespacing_keeps_an_existing_prefix():
    assert namespaced("nad", "ce_loss") == "nad.ce_loss"
    assert namespaced("nad", "nad.ce_loss") == "nad.ce_loss"
    assert namespaced("nad", "nadir") == "nad.nadir"


def test_progress_off_a_terminal_shows_the_elapsed_time_of_a_task_whose_detail_changes():
    stream = io.StringIO()
    progress = ProgressPrinter(stream=stream, interval=0.0)
    progress("compare (A (none), n=5, seed=0)", 0, 2)
    time.sleep(0.15)
    progress("compare (A (none), n=5, seed=1)", 1, 2)
    time.sleep(0.15)
    progress("compare", 2, 2)
    seconds = [float(line.rsplit(" ", 1)[-1].rstrip("s")) for line in stream.getvalue().splitlines()]
    assert seconds[0] == 0.0 and seconds[1] >= 0.1 and seconds[2] >= 0.3


def test_list_json_names_each_components_distribution_and_version():
    result = CliRunner().invoke(main, ["list", "--json"])
    assert result.exit_code == 0, result.output
    payload = _strict(result.stdout)
    ours = next(d for d in payload["defenses"] if d["name"] == "ours")
    assert ours["distribution"] == "bdtool" and ours["version"] == api.__version__
    assert all(row["distribution"] for rows in payload.values() for row in rows)
