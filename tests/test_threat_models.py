"""Threat models are explicit and enforced: a row gets only what its knowledge allows, a defense
that needs more is refused before any work, every report names the knowledge; the null reference
row and the class-aware metrics (docs/method.md, "Honest scoring")."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bdtool.cli import main
from bdtool.core.errors import InvalidParameterError
from bdtool.core.interfaces import Defense, Knowledge
from bdtool.core.experiment.evaluation import evaluate
from bdtool.core.experiment.rows import parse_row
from bdtool.core.results import EvalResult
from bdtool.plugins import get_registries
from bdtool.plugins.builtin.metrics import ClassAwareScore, DefenseEffectivenessRating, Score

SEEN: list[dict] = []


class Spy(Defense):
    """Records what the runner handed it; uses the target label and the trigger when given."""

    name = "test-spy"
    label = "Spy"
    accepts_trigger = True
    accepts_target_label = True

    def apply(self, model, ctx):
        SEEN.append({"attack": ctx.attack, "target": ctx.target_class, "knowledge": ctx.knowledge})
        return model


@pytest.fixture
def spy():
    registry = get_registries().defenses
    registry.register(Spy.name, Spy, source="tests")
    SEEN.clear()
    yield
    registry.unregister(Spy.name)


def compare(store: str, experiment: str, *args: str):
    return CliRunner().invoke(main, ["compare", "--device", "cpu", "--tracking-uri", store, "--experiment", experiment,
                                     "--samples", "5", "--seeds", "1", "--no-log-models", *args])


def test_knowledge_none_never_leaks_the_target_or_the_trigger(spy, mlflow_store, digits_victim):
    result = compare(mlflow_store, "tm-leak", "--defense", "test-spy:knowledge=none",
                     "--defense", "test-spy:knowledge=target", "--defense", "test-spy:knowledge=trigger", "--json")
    assert result.exit_code == 0, result.output
    by_knowledge = {s["knowledge"]: s for s in SEEN}
    assert set(by_knowledge) == {Knowledge.NONE, Knowledge.TARGET, Knowledge.TRIGGER}
    assert by_knowledge[Knowledge.NONE]["target"] is None and by_knowledge[Knowledge.NONE]["attack"] is None
    assert by_knowledge[Knowledge.TARGET]["target"] == 0 and by_knowledge[Knowledge.TARGET]["attack"] is None
    trigger = by_knowledge[Knowledge.TRIGGER]["attack"]
    assert type(trigger) is type(digits_victim.attack) and trigger.target_class == 0
    payload = json.loads(result.output)
    assert [r["label"] for r in payload["rows"]] == ["Spy (none)", "Spy (target label)", "Spy (trigger)"]
    assert [r["knowledge"] for r in payload["rows"]] == ["none", "target", "trigger"]
    client = MlflowClient(tracking_uri=mlflow_store)
    exp = client.get_experiment_by_name("tm-leak")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bdtool.kind") == "defense"]
    assert sorted(r.data.params["knowledge"] for r in runs) == ["none", "target", "trigger"]
    assert sorted(r.data.tags["bdtool.knowledge"] for r in runs) == ["none", "target", "trigger"]


def test_the_default_knowledge_is_clipped_to_what_the_defense_uses(spy):
    regs = get_registries()
    assert parse_row("basicft", Knowledge.TRIGGER, regs).knowledge is Knowledge.NONE
    assert parse_row("suppress-target", Knowledge.TRIGGER, regs).knowledge is Knowledge.TARGET
    assert parse_row("test-spy", Knowledge.TARGET, regs).knowledge is Knowledge.TARGET
    assert parse_row("ours:bdk=false", Knowledge.TRIGGER, regs).knowledge is Knowledge.NONE
    assert parse_row("ours:bdk=true", Knowledge.NONE, regs).knowledge is Knowledge.TRIGGER
    assert parse_row("retrain", Knowledge.TRIGGER, regs).label == "Retraining (oracle)"


@pytest.mark.parametrize("knowledge", ["target", "none"])
@pytest.mark.parametrize("name", [n for n in get_registries().defenses.names()
                                  if get_registries().defenses.get(n).requires_trigger])
def test_a_defense_requiring_the_trigger_is_refused_without_it(name, knowledge, mlflow_store, digits_victim):
    with pytest.raises(InvalidParameterError, match="needs knowledge 'trigger'"):
        parse_row(f"{name}:knowledge={knowledge}", Knowledge.TRIGGER, get_registries())
    result = compare(mlflow_store, "tm-refused", "--defense", name, "--knowledge", knowledge)
    assert result.exit_code != 0 and "needs knowledge 'trigger'" in result.output
    assert "Traceback" not in result.output
    assert MlflowClient(tracking_uri=mlflow_store).get_experiment_by_name("tm-refused") is None  # no run was made


def test_the_null_row_needs_the_target_label_and_a_row_cannot_claim_unused_knowledge():
    regs = get_registries()
    with pytest.raises(InvalidParameterError, match="needs knowledge 'target'"):
        parse_row("suppress-target:knowledge=none", Knowledge.TRIGGER, regs)
    with pytest.raises(InvalidParameterError, match="cannot use knowledge=trigger"):
        parse_row("basicft:knowledge=trigger", Knowledge.TRIGGER, regs)
    with pytest.raises(InvalidParameterError, match="not both"):
        parse_row("ours:knowledge=none,bdk=true", Knowledge.TRIGGER, regs)


def test_the_null_row_removes_exactly_the_target_class(make_context, digits_victim):
    cls = get_registries().defenses.get("suppress-target")
    model = cls().defend(digits_victim.model, make_context(n=5, bdk=False))
    after = evaluate(model, digits_victim.data.evaluation, digits_victim.attack, 10, torch.device("cpu"))
    before = digits_victim.before
    assert after.asr == 0.0 and after.ctca == 0.0
    # Every other class keeps (at least) its accuracy: nothing but the target changed.
    for c in range(1, 10):
        assert after.per_class_acc[c] >= before.per_class_acc[c] - 1e-9
    assert ClassAwareScore().compute(after, before) == 0.0
    assert Score().compute(after, before) > 80  # what the paper's Score alone would report


def _result(acc: float, asr: float, ctca: float) -> EvalResult:
    return EvalResult(acc=acc, asr=asr, ctca=ctca, per_class_acc=[ctca, acc], n_eval=100, target_class=0)


def test_class_aware_score_and_der_by_hand():
    before = _result(acc=0.9, asr=1.0, ctca=0.8)
    kept = _result(acc=0.9, asr=0.0, ctca=0.8)
    half = _result(acc=0.9, asr=0.0, ctca=0.4)
    better = _result(acc=0.9, asr=0.0, ctca=0.9)
    assert ClassAwareScore().compute(kept, before) == pytest.approx(100.0)
    assert ClassAwareScore().compute(half, before) == pytest.approx(50.0)
    assert ClassAwareScore().compute(better, before) == pytest.approx(100.0)  # capped at the Score
    der = DefenseEffectivenessRating()
    assert der.compute(kept, before) == pytest.approx(1.0)  # ASR −100 points, ACC unchanged
    assert der.compute(before, before) == pytest.approx(0.5)  # nothing happened
    assert der.compute(_result(acc=0.5, asr=0.0, ctca=0.8), before) == pytest.approx((1.0 - 0.4 + 1) / 2)
    assert der.compute(_result(acc=1.0, asr=1.0, ctca=0.8), before) == pytest.approx(0.5)  # gains do not count
    assert math.isnan(ClassAwareScore().compute(kept, _result(acc=0.9, asr=1.0, ctca=0.0)))


def test_default_comparison_shows_the_null_row_first_and_marks_removed_classes(mlflow_store, digits_victim):
    result = compare(mlflow_store, "tm-default", "--defense", "suppress-target", "--defense", "basicft:epochs=1",
                     "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    null, basic = payload["rows"]
    assert null["label"] == "Null: suppress target (target label)" and null["class_removed"] is True
    assert null["class_score_mean"] == 0.0 and null["score_mean"] > 80
    assert basic["class_removed"] is False
    assert {"score_mean", "class_score_mean", "der_mean", "asr_mean", "acc_mean", "ctca_mean"} <= set(null)
    texts = __import__("bdtool.core.experiment.rows", fromlist=["default_row_texts"]).default_row_texts(get_registries())
    assert texts[0] == "suppress-target"
    assert [t for t in texts if t.startswith("ours")][:3] == ["ours", "ours:knowledge=target", "ours:knowledge=none"]


def test_metric_columns_are_chosen_with_metric(mlflow_store, digits_victim):
    result = compare(mlflow_store, "tm-columns", "--defense", "suppress-target", "--metric", "der", "--metric", "ctca")
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if line.startswith("Method"))
    assert "DER (↑)" in header and "CTCA (↑)" in header and "Score" not in header and "ASR" not in header
    bad = compare(mlflow_store, "tm-columns", "--defense", "suppress-target", "--metric", "scor")
    assert bad.exit_code != 0 and "unknown metric 'scor'" in bad.output and "did you mean 'score'" in bad.output


def test_default_rows_under_a_lower_knowledge_leave_out_what_cannot_run_or_knows_more():
    from bdtool.core.experiment.rows import default_rows_under

    regs = get_registries()
    kept, skipped = default_rows_under(Knowledge.NONE, regs)
    rows = [parse_row(text, Knowledge.NONE, regs) for text in kept]
    assert rows and all(r.knowledge is Knowledge.NONE for r in rows)
    assert len({r.label for r in rows}) == len(rows)
    left_out = dict(skipped)
    assert "suppress-target" in left_out and "actft" in left_out and "ours:knowledge=target" in left_out
    everything, nothing = default_rows_under(Knowledge.TRIGGER, regs)
    assert nothing == [] and "suppress-target" in everything and "actft" in everything
