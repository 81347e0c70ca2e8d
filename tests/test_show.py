"""`bdtool show` re-renders a past comparison from the MLflow store alone; the comparison's runs
carry what the MLflow UI shows (experiment kind, dataset inputs, descriptions)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bdtool.cli import main
from bdtool.core import tracking
from bdtool.core.tracking.tags import DESCRIPTION_TAG, EXPERIMENT_KIND_TAG, STATE_DICT_DIGEST_TAG


@pytest.fixture(scope="module")
def comparison(mlflow_store, digits_victim, tmp_path_factory):
    """One small comparison in its own experiment of the session store: (experiment, compare output,
    parent run id, its --output folder)."""
    experiment = "show-tests"
    output = tmp_path_factory.mktemp("compare-output")
    result = CliRunner().invoke(main, ["compare", "--device", "cpu", "--tracking-uri", mlflow_store,
                                       "--experiment", experiment, "--defense", "suppress-target", "--defense", "ours",
                                       "--samples", "5", "--seeds", "1", "--no-log-models", "--output", str(output)])
    assert result.exit_code == 0, result.output
    parent = result.output.split("MLflow parent run ")[1].split()[0]
    return experiment, result.output, parent, output


def table_lines(output: str) -> list[str]:
    """The text table of a compare/show output: from its title to the last row."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if " mean ± std over " in line)
    end = next(i for i in range(start + 3, len(lines))
               if not lines[i].strip() or lines[i].startswith(("MLflow parent run", "[class removed]:")))
    return lines[start:end]


def show(mlflow_store, *args):
    return CliRunner().invoke(main, ["show", "--tracking-uri", mlflow_store, *args])


def test_show_latest_prints_the_table_compare_printed(mlflow_store, comparison, tmp_path):
    experiment, compare_output, parent, compare_folder = comparison
    result = show(mlflow_store, "latest", "--experiment", experiment, "--output", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    expected = table_lines(compare_output)
    assert len(expected) >= 5  # title, header, rule, Before, two rows
    assert table_lines(result.output) == expected
    assert f"MLflow parent run {parent}" in result.output
    # --output: the files bdtool compare wrote, byte for byte
    for name in ("summary.md", "summary.csv", "summary.json"):
        assert (tmp_path / "out" / name).read_bytes() == (compare_folder / name).read_bytes()
    # the same by id
    by_id = show(mlflow_store, parent)
    assert by_id.exit_code == 0, by_id.output
    assert table_lines(by_id.output) == expected


def test_show_json_is_the_logged_summary(mlflow_store, comparison):
    experiment, _, parent, compare_folder = comparison
    result = show(mlflow_store, parent, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload.pop("parent_run_id") == parent
    assert payload == json.loads((compare_folder / "summary.json").read_text())
    assert [r["label"] for r in payload["rows"]] == ["Null: suppress target (target label)", "Ours (trigger)"]


@pytest.mark.parametrize("ref, message", [("0123456789abcdef0123456789abcdef", "no MLflow run"),
                                          ("victim", "is not a comparison")])
def test_show_unknown_or_wrong_run_is_one_line_and_nonzero(mlflow_store, comparison, digits_victim, ref, message):
    result = show(mlflow_store, digits_victim.run_id if ref == "victim" else ref)
    assert result.exit_code != 0
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_show_latest_of_an_experiment_without_comparisons_fails_clearly(mlflow_store, comparison):
    result = show(mlflow_store, "latest", "--experiment", "no-such-experiment")
    assert result.exit_code != 0 and "no MLflow experiment 'no-such-experiment'" in result.output


def test_runs_carry_what_the_mlflow_ui_shows(mlflow_store, comparison):
    experiment, _, parent, _ = comparison
    client = MlflowClient(tracking_uri=mlflow_store)
    exp = client.get_experiment_by_name(experiment)
    assert exp.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    parent_run = client.get_run(parent)
    description = parent_run.data.tags[DESCRIPTION_TAG]
    assert "| Method | n |" in description and "Ours (trigger)" in description
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(children) == 2
    for run in children:
        note = run.data.tags[DESCRIPTION_TAG]
        assert run.data.tags[tracking.ROW_TAG] in note and "n=5, seed=0" in note
        inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"training", "evaluation"}
        assert inputs["training"].name == "digits D_U n=5 seed=0"
        assert json.loads(inputs["training"].source)["tags"] == {"dataset": "digits", "split": "unseen pool (D_U)",
                                                                 "n": "5", "seed": "0"}
        assert len(inputs["training"].digest) == 8


def test_ensure_experiment_marks_an_existing_experiment_as_model_training(mlflow_store):
    client = MlflowClient(tracking_uri=mlflow_store)
    experiment_id = client.create_experiment("made-by-hand")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags
    tracking.setup_tracking(mlflow_store)
    assert tracking.ensure_experiment("made-by-hand", mlflow_store) == experiment_id
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_show_refuses_a_summary_that_is_not_what_the_run_wrote(mlflow_store, comparison):
    """The comparison logs the sha256 of its summary.json; a summary changed in the store afterwards
    (another comparison's table written over it) is refused in one line, not shown under this id."""
    from pathlib import Path
    from urllib.parse import urlparse

    _, _, parent, _ = comparison
    run = MlflowClient(tracking_uri=mlflow_store).get_run(parent)
    assert len(run.data.tags[tracking.SUMMARY_SHA256_TAG]) == 64
    stored = Path(urlparse(run.info.artifact_uri).path) / "summary" / "summary.json"
    original = stored.read_bytes()
    try:
        stored.write_bytes(original.replace(b'"label"', b'"label" ', 1))
        result = show(mlflow_store, parent)
        assert result.exit_code == 1 and "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "is not the one the run wrote" in lines[0], result.output
    finally:
        stored.write_bytes(original)
    assert show(mlflow_store, parent).exit_code == 0


def test_the_comparison_run_holds_every_rows_means_as_metrics_and_the_table(mlflow_store, comparison, tmp_path):
    """Comparisons can be sorted and filtered in the UI and with mlflow.search_runs: each row's mean
    and std of every metric are the parent run's metrics (``<row>.n<N>.<metric>_mean``), equal to
    the summary's in MLflow's units (fractions: Score / 100), and the table is a table artifact."""
    from pathlib import Path

    import mlflow

    from bdtool.core.experiment.report import row_key
    from bdtool.core.experiment.runner import TABLE_ARTIFACT

    experiment, _, parent, compare_folder = comparison
    summary = json.loads((compare_folder / "summary.json").read_text())
    metrics = MlflowClient(tracking_uri=mlflow_store).get_run(parent).data.metrics
    ours = next(r for r in summary["rows"] if r["label"] == "Ours (trigger)")
    assert row_key("Ours (trigger)", 5) == "ours_trigger.n5"
    for key, unit in (("score", 0.01), ("class_score", 0.01), ("asr", 1), ("acc", 1), ("ctca", 1), ("time_s", 1)):
        assert metrics[f"ours_trigger.n5.{key}_mean"] == pytest.approx(unit * ours[f"{key}_mean"])
        assert metrics[f"ours_trigger.n5.{key}_std"] == pytest.approx(unit * ours[f"{key}_std"])
    mlflow.set_tracking_uri(mlflow_store)
    exp = MlflowClient(tracking_uri=mlflow_store).get_experiment_by_name(experiment)
    found = mlflow.search_runs([exp.experiment_id], filter_string="metrics.`ours_trigger.n5.asr_mean` <= 1",
                               output_format="list")
    assert parent in [r.info.run_id for r in found]
    client = MlflowClient(tracking_uri=mlflow_store)
    assert TABLE_ARTIFACT in [a.path for a in client.list_artifacts(parent)]
    table = json.loads(Path(client.download_artifacts(parent, TABLE_ARTIFACT, str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], values)) for values in table["data"]]
    assert [r["row"] for r in rows] == [r["label"] for r in summary["rows"]]
    assert rows[1]["class_score_mean"] == pytest.approx(ours["class_score_mean"])


def test_every_builtin_metric_is_a_fraction_in_mlflow(mlflow_store, comparison):
    """One unit for every metric in MLflow: Score and ClassScore (points in the table) are logged
    / 100 like the accuracies, and every run's value is within [0, 1]; the table keeps its units."""
    from bdtool.plugins import get_registries

    experiment, _, parent, compare_folder = comparison
    summary = json.loads((compare_folder / "summary.json").read_text())
    client = MlflowClient(tracking_uri=mlflow_store)
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")]
    by_id = {r["run_id"]: r for r in summary["runs"]}
    names = [e.name for e in get_registries().metrics]
    for run in runs:
        for name in names:
            if name in run.data.metrics:
                assert 0.0 <= run.data.metrics[name] <= 1.0, (name, run.data.metrics[name])
        table = by_id[run.info.run_id]["metrics"]
        if table.get("score") is not None:
            assert run.data.metrics["score"] == pytest.approx(table["score"] / 100)


def test_logged_models_are_named_for_their_row_and_carry_their_metrics_and_dataset(mlflow_store, digits_victim):
    """Each defended model is a LoggedModel named for its row, n and seed, tagged with its defense,
    row, knowledge and victim, and its run's metrics are logged against it and the evaluation half."""
    experiment = "logged-models"
    result = CliRunner().invoke(main, ["compare", "--device", "cpu", "--tracking-uri", mlflow_store, "--experiment",
                                       experiment, "--defense", "ours", "--samples", "5", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=mlflow_store)
    exp = client.get_experiment_by_name(experiment)
    (model,) = client.search_logged_models([exp.experiment_id])
    assert model.name == "ours_trigger-n5-seed0"
    assert model.tags["bdtool.defense"] == "ours" and model.tags["bdtool.row"] == "Ours (trigger)"
    assert model.tags["bdtool.knowledge"] == "trigger" and model.tags["bdtool.victim_hash"] == digits_victim.config_hash
    by_key = {m.key: m for m in model.metrics or []}
    assert {"score", "acc", "asr", "ctca"} <= set(by_key)
    assert by_key["acc"].dataset_name == "digits evaluation" and by_key["acc"].model_id == model.model_id
    # the weights are stored once: the run's model/state_dict.pt, which the LoggedModel points at
    run_id = model.source_run_id
    files = [f.path for f in client.list_artifacts(run_id, "model")]
    assert files == ["model/state_dict.pt"]
    assert model.tags["bdtool.weights"] == f"runs:/{run_id}/model/state_dict.pt"
    assert model.tags["bdtool.weights_sha256"] == client.get_run(run_id).data.tags[STATE_DICT_DIGEST_TAG]
    stored = [p for p in Path(model.artifact_location.removeprefix("file://")).rglob("*") if p.is_file()] \
        if model.artifact_location.startswith(("file://", "/")) else []
    # no second copy (a pickled MLflow PyTorch model): at most MLflow's own metadata file
    assert [p.name for p in stored] in ([], ["MLmodel"]) and all(p.stat().st_size < 10_000 for p in stored), stored
