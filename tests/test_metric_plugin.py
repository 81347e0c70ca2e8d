"""A metric registered by a third-party package, found through the entry-point metadata pip
writes, is computed for every run, logged to MLflow and shown as a table column without any
change to bdtool (the example package plugins/examples/bdtool-clp registers `nontarget_bal_acc`)."""

import json

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bdtool.cli import main
from bdtool.plugins import get_registries, reset_registries


def test_a_metric_plugin_appears_in_the_table_and_in_its_runs(installed_example, monkeypatch, mlflow_store,
                                                                digits_victim):
    monkeypatch.syspath_prepend(str(installed_example))
    monkeypatch.delenv("BDTOOL_PLUGINS", raising=False)
    reset_registries()
    try:
        regs = get_registries()
        assert regs.metrics.entry("nontarget_bal_acc").source == "clp"
        args = ["compare", "--device", "cpu", "--tracking-uri", mlflow_store, "--experiment", "metric-plugin",
                "--defense", "suppress-target", "--defense", "basicft:epochs=1", "--samples", "5", "--seeds", "1",
                "--no-log-models"]
        table = CliRunner().invoke(main, args)
        assert table.exit_code == 0, table.output
        header = next(line for line in table.output.splitlines() if line.startswith("Method"))
        assert "NonTargetBalAcc (↑)" in header
        payload = json.loads(CliRunner().invoke(main, args + ["--json"]).output)
        null_row = payload["rows"][0]
        # Removing the target class leaves the other classes untouched: their balanced accuracy
        # stays at the victim's (within rounding), while CTCA is 0.
        before = digits_victim.before.per_class_acc[1:]
        assert abs(null_row["nontarget_bal_acc_mean"] - sum(before) / len(before)) < 1e-6
        assert null_row["ctca_mean"] == 0.0
        client = MlflowClient(tracking_uri=mlflow_store)
        exp = client.get_experiment_by_name("metric-plugin")
        runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bdtool.kind") == "defense"]
        assert runs and all("nontarget_bal_acc" in r.data.metrics for r in runs)
    finally:
        reset_registries()
