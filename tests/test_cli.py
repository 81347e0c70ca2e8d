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


@pytest.mark.parametrize("args, message, code", [
    (("train", "--dataset", "digts"), "unknown dataset 'digts'; did you mean 'digits'", 2),
    (("train", "--model", "resnet"), "unknown model 'resnet'", 2),
    (("train", "--attack", "badnets:size=abc"), "badnets: size='abc' is not an integer", 2),
    (("train", "--target", "12"), "target class 12 is out of range", 1),
])
def test_user_errors_are_one_line_without_traceback(cli, args, message, code):
    """A name or parameter the registries refuse is a usage error (exit 2, like click's own); a value
    only the data set can refuse is exit 1."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code
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


# --- conventions: -h, examples, presets, environment, -q, NO_COLOR, completion, exit codes -------

def _commands():
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    import cli_surface

    return [words for words, _ in cli_surface._commands(main)]


@pytest.mark.parametrize("words", _commands(), ids=" ".join)
def test_every_command_takes_h_and_shows_an_example(cli, words):
    result = cli(*words, "-h")
    assert result.exit_code == 0 and "Examples:" in result.output and f"bdtool {' '.join(words)}" in result.output


def test_sweep_help_lists_every_registered_preset(cli):
    from bdtool.plugins import get_registries

    text = cli("sweep", "--help").output
    assert "Presets:" in text
    for entry in get_registries().sweeps:
        assert f"  {entry.name} " in text, entry.name


@pytest.mark.parametrize("variable", ["BDTOOL_EXPERIMENT", "MLFLOW_EXPERIMENT_NAME"])
def test_the_experiment_comes_from_the_environment(cli, monkeypatch, variable):
    monkeypatch.setenv(variable, "from-the-environment")
    result = cli("show", "latest")
    assert result.exit_code == 1 and "no MLflow experiment 'from-the-environment'" in result.stderr


def test_quiet_leaves_stderr_empty_on_success(cli, digits_victim):
    loud = cli("train", "--device", "cpu", "--experiment", "tests")
    quiet = cli("-q", "train", "--device", "cpu", "--experiment", "tests")
    assert loud.exit_code == quiet.exit_code == 0
    assert "reusing victim" in loud.stderr and quiet.stderr == ""
    assert quiet.stdout == loud.stdout
    both = cli("-q", "-v", "list")
    assert both.exit_code == 2 and "contradict" in both.stderr


def test_no_color_strips_styling(mlflow_store, monkeypatch):
    runner = CliRunner()
    assert "\x1b[" in runner.invoke(main, ["list"], color=True).output
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in runner.invoke(main, ["list"], color=True).output


def _complete(words: str, mlflow_store: str) -> list[str]:
    result = CliRunner().invoke(main, [], prog_name="bdtool", env={
        "_BDTOOL_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)
        if not words.endswith(" ") else str(len(words.split())), "MLFLOW_TRACKING_URI": mlflow_store})
    return [line.split(",", 1)[1] for line in result.output.splitlines() if "," in line]


def test_shell_completion_of_plugin_names_params_and_run_ids(mlflow_store, digits_victim):
    assert {"ours", "ours-proj"} <= set(_complete("bdtool compare --defense ou", mlflow_store))
    assert "ours-proj:scale=" in _complete("bdtool compare --defense ours-proj:sc", mlflow_store)
    assert set(_complete("bdtool compare --attack bl", mlflow_store)) == {"blend"}
    assert "trigger-free" in _complete("bdtool sweep tr", mlflow_store)
    assert "fashion-mnist" in _complete("bdtool train --dataset fa", mlflow_store)
    compared = CliRunner().invoke(main, ["compare", "--tracking-uri", mlflow_store, "--experiment", "completion",
                                         "--defense", "suppress-target", "--samples", "5", "--seeds", "1",
                                         "--no-log-models", "--device", "cpu"])
    parent = compared.output.split("MLflow parent run ")[1].split()[0]
    ids = _complete(f"bdtool show --tracking-uri {mlflow_store} {parent[:6]}", mlflow_store)
    assert parent in ids and "latest" in _complete(f"bdtool show --tracking-uri {mlflow_store} la", mlflow_store)


@pytest.mark.parametrize("args", [("compare", "--defense", "nope"), ("compare", "--defense", "ours:bogus=1"),
                                  ("train", "--dataset", "digts"), ("compare", "--seeds", "0"), ("nope",)])
def test_usage_errors_exit_2_in_one_line(cli, args):
    result = cli(*args)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
