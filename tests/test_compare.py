"""`bdtool compare` end to end on digits, checked through the MLflow client API."""

import json
from dataclasses import dataclass

import conftest
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bdtool.cli import main
from bdtool.core.experiment.rows import parse_rows
from bdtool.core.interfaces import Defense, Knowledge
from bdtool.plugins import get_registries


@dataclass
class ShrinkParams:
    factor: float = 1.0


class ShrinkClassifier(Defense):
    """A real (if naive) defense for the tests: scales the last Linear layer."""

    name = "test-shrink"
    label = "Shrink"
    Params = ShrinkParams

    def apply(self, model, ctx):
        import torch

        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(self.params.factor)
        return model


class Exploding(conftest.Explodes):
    name = "test-explode"


@pytest.fixture
def test_defenses(register_defense):
    register_defense(ShrinkClassifier)
    register_defense(Exploding)


class Store:
    """The session MLflow store (its cached digits victim is reused) and a fresh experiment."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment

    def invoke(self, *args: str):
        return CliRunner().invoke(main, ["compare", "--device", "cpu", "--experiment", self.experiment, *args])

    def runs(self):
        client = MlflowClient(tracking_uri=self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        return client, ([] if exp is None else client.search_runs([exp.experiment_id], max_results=1000))


@pytest.fixture
def store(mlflow_store, digits_victim, monkeypatch, request):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    return Store(mlflow_store, f"cmp-{request.node.name}")


def test_comparison_creates_parent_and_nested_runs(store, test_defenses, tmp_path):
    out = tmp_path / "tables"
    result = store.invoke("--defense", "test-shrink", "--defense", "test-shrink:factor=0.5", "--defense", "test-explode",
                    "--samples", "5", "--samples", "10", "--seeds", "2", "--output", str(out))
    assert result.exit_code == 3, result.output  # some runs failed (README, "bdtool compare")
    client, runs = store.runs()
    by_kind = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get("bdtool.kind"), []).append(run)
    (parent,) = by_kind["comparison"]
    assert "victim" not in by_kind  # the cached session victim was reused
    victim_run_id = parent.data.tags["bdtool.victim_run_id"]
    assert client.get_run(victim_run_id).data.tags["bdtool.kind"] == "victim"
    nested = by_kind["defense"]
    assert len(nested) == 3 * 2 * 2
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in nested)
    assert all(r.data.tags["bdtool.victim_run_id"] == victim_run_id for r in nested)
    assert parent.info.status == "FAILED"  # 4 of its 12 runs failed
    assert parent.data.tags["bdtool.error"].startswith("4 of 12 runs failed: ")

    ok = [r for r in nested if r.data.tags["bdtool.defense"] == "test-shrink"]
    assert len(ok) == 8 and all(r.info.status == "FINISHED" for r in ok)
    sample = ok[0]
    for key in ("dataset", "model", "attack", "n", "seed", "knowledge", "defense", "defense.factor"):
        assert key in sample.data.params
    for key in ("acc", "asr", "ctca", "min_class_acc", "score", "defense_time_s", "class_acc_0"):
        assert key in sample.data.metrics
    model_files = {a.path for a in client.list_artifacts(sample.info.run_id, "model")}
    assert "model/state_dict.pt" in model_files
    assert {a.path for a in client.list_artifacts(sample.info.run_id)} >= {"model", "evaluation.json"}

    failed = [r for r in nested if r.data.tags["bdtool.defense"] == "test-explode"]
    assert len(failed) == 4 and all(r.info.status == "FAILED" for r in failed)
    assert all("this defense always fails" in r.data.tags["bdtool.error"] for r in failed)

    # The defended models logged under the victim's hash must never be taken for the victim.
    from bdtool.core.experiment.victim_cache import find_cached_run

    assert find_cached_run(parent.data.tags["bdtool.victim_hash"]) == victim_run_id

    summary = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert summary >= {"summary/summary.md", "summary/summary.csv", "summary/summary.json",
                       "summary/asr_acc_ctca.png", "summary/score_vs_n.png"}
    assert (out / "summary.md").exists() and (out / "summary.csv").exists()
    assert "failed" in result.stdout and "Shrink" in result.stdout and "[factor=0.5]" in result.stdout


def test_json_output_parses_and_matches_the_runs(store, test_defenses):
    result = store.invoke("--defense", "test-shrink:factor=0", "--samples", "5", "--seeds", "1", "--json", "--no-log-models")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (row,) = data["rows"]
    assert row["label"].startswith("Shrink") and "[factor=0]" in row["label"] and row["n"] == 5
    # Zeroing the classifier's weights leaves only its biases: every image, stamped or not, gets
    # the same class c. So ACC is c's share of the evaluation half (~10 %), MinClass is 0, and ASR
    # and CTCA are both 1 (c is the target) or both 0.
    assert row["asr_mean"] in (0.0, 1.0) and row["ctca_mean"] == row["asr_mean"]
    assert row["acc_mean"] < 0.2 and row["min_class_acc_mean"] == 0.0
    assert row["acc_mean"] < data["before"]["acc_mean"] - 0.5
    assert data["before"]["asr_mean"] >= 0.95


@pytest.mark.parametrize("args, message", [
    (("--defense", "nope"), "unknown defense 'nope'"),
    (("--defense", "test-shrink:factor=abc"), "test-shrink: factor='abc' is not a number"),
    (("--defense", "test-shrink:bogus=1"), "test-shrink: unknown parameter 'bogus'"),
    (("--defense", "test-shrink:bdk=maybe"), "is not a boolean"),
    (("--defense", "test-shrink", "--samples", "0"), "'--samples': 0 is not in the range 1<=x"),
    (("--defense", "test-shrink", "--samples", "100000"), "larger than the unseen pool"),
    (("--defense", "test-shrink", "--seeds", "0"), "'--seeds': 0 is not in the range 1<=x<=1000"),
])
def test_bad_specs_exit_nonzero_with_one_line_and_create_no_runs(store, test_defenses, args, message):
    result = store.invoke(*args)
    assert result.exit_code != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    _, runs = store.runs()
    assert [r for r in runs if r.data.tags.get("bdtool.kind") in ("comparison", "defense")] == []


def test_trigger_defense_with_bdk_false_is_refused(store, register_defense):
    class NeedsTrigger(Defense):
        name = "test-needs-trigger"
        label = "NT"
        requires_trigger = True

        def apply(self, model, ctx):
            return model

    register_defense(NeedsTrigger)
    result = store.invoke("--defense", "test-needs-trigger:bdk=false")
    assert result.exit_code != 0
    assert "'test-needs-trigger' needs" in result.stderr and "trigger" in result.stderr
    result = store.invoke("--defense", "test-needs-trigger", "--knowledge", "none")
    assert result.exit_code != 0 and "cannot run with" in result.stderr


def test_ctrl_c_marks_runs_killed_and_reports_nothing(store, test_defenses, register_defense):
    class Interrupted(Defense):
        name = "test-interrupt"
        label = "Interrupt"

        def apply(self, model, ctx):
            raise KeyboardInterrupt

    register_defense(Interrupted)
    result = store.invoke("--defense", "test-shrink", "--defense", "test-interrupt", "--samples", "5",
                          "--seeds", "1", "--no-log-models")
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "Score" not in result.stdout
    client, runs = store.runs()
    status = {r.data.tags.get("bdtool.defense", r.data.tags.get("bdtool.kind")): r.info.status for r in runs}
    assert status == {"test-shrink": "FINISHED", "test-interrupt": "KILLED", "comparison": "KILLED"}
    parent = next(r for r in runs if r.data.tags.get("bdtool.kind") == "comparison")
    assert client.list_artifacts(parent.info.run_id, "summary") == []


def test_training_set_defense_runs_once_per_seed_with_n_the_training_size(store, digits_victim, register_defense):
    class UsesTrainingSet(Defense):
        name = "test-uses-train"
        label = "UsesTrain"
        needs_training_set = True

        def apply(self, model, ctx):
            assert len(ctx.unlearn) == 0 and ctx.train is not None and ctx.draw_unlearn is None
            return model

    register_defense(UsesTrainingSet)
    result = store.invoke("--defense", "test-uses-train", "--samples", "5", "--samples", "50", "--seeds", "2",
                          "--json", "--no-log-models")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["rows"]
    clean = len(digits_victim.data.train) - len(digits_victim.data.poisoned_indices)
    assert row["n"] == clean and row["seeds_ok"] == 2
    _, runs = store.runs()
    assert len([r for r in runs if r.data.tags.get("bdtool.kind") == "defense"]) == 2


def parsed_labels(texts: list[str]) -> list[str]:
    """The labels the CLI gives these rows under its default knowledge (trigger)."""
    return [r.label for r in parse_rows(texts, Knowledge.TRIGGER, get_registries())]


def test_sweep_table9_end_to_end(mlflow_store, digits_victim, request):
    experiment = f"sweep-{request.node.name}"
    grid = get_registries().sweeps.get("table9")
    result = CliRunner().invoke(main, ["sweep", "table9", "--samples", "5", "--seeds", "1", "--no-log-models",
                                       "--device", "cpu", "--tracking-uri", mlflow_store, "--experiment", experiment])
    assert result.exit_code == 3, result.output  # the alpha=0,beta=0 rows fail
    labels = parsed_labels(grid.rows)
    assert len(labels) == len(grid.rows) == 18
    for label in labels:
        assert label in result.stdout, label

    _, runs = Store(mlflow_store, experiment).runs()
    by_kind: dict[str, list] = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get("bdtool.kind"), []).append(run)
    assert set(by_kind) == {"comparison", "defense"}  # the session victim was reused, not retrained
    (parent,) = by_kind["comparison"]
    nested = by_kind["defense"]
    assert len(nested) == len(labels)  # one run per row (one n, one seed)
    assert sorted(r.data.tags["bdtool.row"] for r in nested) == sorted(labels)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in nested)
    assert parent.info.status == "FAILED" and "runs failed" in parent.data.tags["bdtool.error"]
    # alpha = beta = 0 makes A constant: those rows fail with the defense's own clear error (and
    # so may others whose A is constant); the default alpha=0, beta=-1 and most of the grid run.
    status = {r.data.tags["bdtool.row"]: r for r in nested}
    by_text = dict(zip(grid.rows, labels))
    for text, label in by_text.items():
        run = status[label]
        if "alpha=0,beta=0" in text:
            assert run.info.status == "FAILED", text
        if run.info.status == "FAILED":
            assert "standard deviation 0" in run.data.tags["bdtool.error"], text
        else:
            assert run.info.status == "FINISHED" and "score" in run.data.metrics, text
    finished = [r for r in nested if r.info.status == "FINISHED"]
    assert len(finished) >= len(nested) // 2
    assert all(status[by_text[t]].info.status == "FINISHED" for t in grid.rows if "alpha=0,beta=-1" in t)
    assert {r.data.params["n"] for r in nested} == {"5"}


def test_repair_row_end_to_end(store):
    result = store.invoke("--defense", "ours:repair=0.01", "--defense", "ours", "--samples", "5", "--seeds", "1",
                          "--no-log-models", "--tracking-uri", store.uri)
    assert result.exit_code == 0, result.output
    repaired_label, plain_label = parsed_labels(["ours:repair=0.01", "ours"])
    _, runs = store.runs()
    nested = {r.data.tags["bdtool.row"]: r for r in runs if r.data.tags.get("bdtool.kind") == "defense"}
    assert set(nested) == {repaired_label, plain_label}
    repaired, plain = nested[repaired_label], nested[plain_label]
    assert float(repaired.data.params["repair_lr"]) == pytest.approx(0.01)
    assert plain.data.params.get("repair_lr", "") == ""
    assert "repair_time_s" in repaired.data.metrics and "repair_time_s" not in plain.data.metrics
    # The same defense, seed and D_U: the repair is the only difference between the two runs.
    keys = ("acc", "asr", "ctca", "min_class_acc")
    assert repaired.data.params["repair"] == "finetune"
    assert repaired.data.metrics["repair_time_s"] > 0 or any(
        repaired.data.metrics[k] != plain.data.metrics[k] for k in keys)
