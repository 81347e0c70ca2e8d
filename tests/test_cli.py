import json

import pytest
from click.testing import CliRunner

from bdtool.cli import main


@pytest.fixture
def cli(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and "bdtool, version" in result.stdout


def test_list_json_shows_builtins_and_their_plugin(cli):
    result = cli("list", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert {d["name"] for d in data["datasets"]} >= {"digits", "fashion-mnist", "cifar10", "mnist", "gtsrb", "svhn"}
    assert {d["name"] for d in data["models"]} == {"small-cnn", "resnet18", "vgg"}
    assert {d["name"] for d in data["attacks"]} >= {"badnets", "blend"}
    assert {d["name"] for d in data["metrics"]} >= {"acc", "asr", "ctca", "score", "min_class_acc"}
    assert next(d for d in data["attacks"] if d["name"] == "badnets")["plugin"] == "attacks"


def test_plugins_json_names_distribution_and_registrations(cli):
    data = json.loads(cli("plugins", "--json").stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["datasets"]["distribution"] == "bdtool"
    assert "digits" in by_name["datasets"]["registers"]["datasets"]


def test_train_reuses_the_cached_victim(cli, digits_victim):
    result = cli("train", "--json", "--device", "cpu", "--experiment", "tests")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["reused"] is True and data["run_id"] == digits_victim.run_id
    assert data["asr"] >= 0.95 and data["acc"] >= 0.90


@pytest.mark.parametrize("args, message", [
    (("train", "--dataset", "digts"), "unknown dataset 'digts'; did you mean 'digits'"),
    (("train", "--model", "resnet"), "unknown model 'resnet'"),
    (("train", "--attack", "badnets:size=abc"), "badnets: size='abc' is not an integer"),
    (("train", "--target", "12"), "target class 12 is out of range"),
])
def test_user_errors_are_one_line_without_traceback(cli, args, message):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, says", [
    (["compare", "--experiment", ""], "an experiment name cannot be empty"),
    (["compare", "--experiment", "x" * 501], "at most 500 characters"),
    (["scan", "--experiment", "a\x07b"], "control characters"),
    (["compare", "--victim-seed", "123456789012345678901"], "not in the range 0<=x<=2147483647"),
    (["compare", "--victim-seed", "-1"], "not in the range"),
    (["defend", "model.pt", "--model", "small-cnn", "--data", ".", "--seed", "99999999999999999999"], "not in the range"),
])
def test_names_and_seeds_the_libraries_refuse_are_refused_first_in_one_line(cli, args, says):
    """MLflow refuses an empty or over-long experiment name, torch a seed past 2⁶³: bdtool says so
    before either is reached (they were a 60-line MLflow traceback and a torch overflow)."""
    result = cli(*args)
    assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output
