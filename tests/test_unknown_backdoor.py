"""The trigger-free path (defenses/universal_search.py and ours-proj's ``search=universal``):
it finds the digits victim's backdoor and target from D_U alone, leaves a clean victim alone, never
sees the trigger, the target or the evaluation half, and ``bdtool scan`` says so."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from bdtool.cli import main
from bdtool.core.experiment.context import defense_context
from bdtool.defenses.activation_subspace import SubspaceEditing
from bdtool.defenses.universal_search import (FamilyResult, UniversalSearchParams, apply_perturbation,
                                              detect_backdoor, project_mask, search_family, warp_images)
from hypothesis import given, settings
from hypothesis import strategies as st

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def clean_victim(run_env):
    """A digits victim trained without any poisoned sample (``--poison-rate 0``)."""
    from bdtool.core.experiment.victim import VictimSpec, get_victim

    return get_victim(VictimSpec(poison_rate=0.0), run_env)


def _trigger_free_context(victim, seed=0):
    ctx = defense_context(victim, SubspaceEditing, 50, seed, CPU, trigger=False, target=False)
    assert ctx.attack is None and ctx.target_class is None
    return ctx


def test_the_gap_is_the_log_ratio_of_the_two_smallest_radii_and_zero_for_a_class_never_reached():
    result = FamilyResult("additive", [0.2, 0.5, math.inf, 0.4], torch.zeros(4, 1), last_radius=0.8, threshold=0.2)
    assert result.smallest() == 0
    assert result.gap() == pytest.approx(math.log(0.4 / 0.2))
    assert result.gap(target=3) == pytest.approx(math.log(0.2 / 0.4))  # not the smallest: negative
    assert result.gap(target=2) == 0.0  # never reached: no evidence


def test_a_zero_warp_is_the_identity_and_perturbations_stay_in_the_unit_range():
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(warp_images(x, torch.zeros(1, 2, 4, 4)), x, atol=1e-5)
    assert torch.allclose(apply_perturbation("warp", torch.zeros(2, 4, 4), x), x, atol=1e-5)
    pushed = apply_perturbation("additive", torch.full((1, 8, 8), 3.0), x)
    assert float(pushed.min()) >= 0.0 and float(pushed.max()) <= 1.0


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 70.0), st.floats(-2.0, 3.0))
def test_the_mask_projection_lands_in_the_box_within_the_budget_and_keeps_a_feasible_mask(seed, budget, shift):
    mask = torch.randn(3, 64, generator=torch.Generator().manual_seed(seed)) + shift
    projected = project_mask(mask, torch.full((3,), budget))
    assert float(projected.min()) >= 0.0 and float(projected.max()) <= 1.0
    assert bool((projected.sum(1) <= budget + 1e-3).all())
    feasible = mask.clamp(0, 1).sum(1) <= budget
    assert torch.equal(projected[feasible], mask.clamp(0, 1)[feasible])  # nothing to take away: only the box
    tight = ~feasible
    if bool(tight.any()):  # over budget: the budget is used up, not undershot
        assert torch.allclose(projected[tight].sum(1), torch.full((int(tight.sum()),), budget), atol=1e-2)


def test_a_patch_perturbation_stamps_its_pattern_where_its_mask_is():
    x = torch.rand(2, 1, 8, 8)
    patch = torch.zeros(2, 8, 8)
    patch[0, 6:, 6:] = 1.0  # the mask: the bottom-right 2 x 2
    patch[1] = 0.7  # the pattern
    stamped = apply_perturbation("patch", patch, x)
    assert torch.allclose(stamped[:, :, 6:, 6:], torch.full((2, 1, 2, 2), 0.7))
    assert torch.equal(stamped[:, :, :6], x[:, :, :6])


def test_the_patch_search_finds_the_badnets_corner_and_the_victims_target(digits_victim):
    """The patch family alone: its smallest mask goes to the target, and is a few pixels (the
    trigger is a 2 x 2 patch), far smaller than the next class's."""
    ctx = _trigger_free_context(digits_victim)
    result = search_family(digits_victim.model, ctx.unlearn.x, ctx.unlearn.y, ctx.num_classes, "patch",
                           UniversalSearchParams(), CPU, seed=0)
    assert result.smallest() == digits_victim.spec.target
    assert result.gap() > result.threshold
    assert result.radii[result.smallest()] <= 8.0  # pixels of the mask


def test_the_search_finds_the_backdoor_and_its_target_from_d_u_alone(digits_victim, monkeypatch):
    """A trigger-free run: the attack is not in the context, the attack cannot stamp (it raises
    if anything calls it), and D_U comes from the unseen pool, not the evaluation half."""
    ctx = _trigger_free_context(digits_victim)

    def no_trigger(*args, **kwargs):
        raise AssertionError("a trigger-free search stamped with the real trigger")

    monkeypatch.setattr(type(digits_victim.attack), "apply", no_trigger)
    evaluation = {tuple(row.flatten().tolist()) for row in digits_victim.data.evaluation.x}
    assert not any(tuple(row.flatten().tolist()) in evaluation for row in ctx.unlearn.x)
    detection = detect_backdoor(digits_victim.model, ctx.unlearn.x, ctx.unlearn.y, ctx.num_classes,
                                UniversalSearchParams(), CPU, seed=0)
    assert detection.detected and detection.target == 0 == digits_victim.spec.target
    assert detection.score > 1.0


def test_a_clean_victim_is_not_flagged_and_comes_back_unchanged(clean_victim):
    ctx = _trigger_free_context(clean_victim)
    logged: dict[str, float] = {}
    ctx.log_metric = lambda key, value, step=None: logged.__setitem__(key, value)
    before = {k: v.clone() for k, v in clean_victim.model.state_dict().items()}
    defense = SubspaceEditing(SubspaceEditing.make_params({}))
    model = defense.defend(clean_victim.fresh_copy(), ctx)
    assert logged["ours-proj.detected"] == 0.0 and logged["ours-proj.detected_class"] == -1.0
    assert logged["ours-proj.detection_score"] <= logged["ours-proj.detection_threshold"]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_backdoored_victim_is_edited_and_its_backdoor_removed(digits_victim):
    from bdtool.core.experiment.evaluation import evaluate

    ctx = _trigger_free_context(digits_victim)
    logged: dict[str, float] = {}
    ctx.log_metric = lambda key, value, step=None: logged.__setitem__(key, value)
    model = SubspaceEditing(SubspaceEditing.make_params({})).defend(digits_victim.fresh_copy(), ctx)
    result = evaluate(model, digits_victim.data.evaluation, digits_victim.attack, 10, CPU)
    assert logged["ours-proj.detected"] == 1.0 and logged["ours-proj.detected_class"] == 0.0
    assert result.asr <= 0.05 < digits_victim.before.asr
    assert result.ctca >= 0.9 * digits_victim.before.ctca and result.acc >= 0.97 * digits_victim.before.acc


@pytest.mark.parametrize("options, message", [
    ("search=magic", "search='magic' is not one of universal, nc"),
    ("search_steps=0", "search_steps must be >= 1"),
])
def test_bad_search_options_are_refused_in_one_line(mlflow_store, options, message):
    result = CliRunner().invoke(main, ["compare", "--defense", f"ours-proj:{options}", "--tracking-uri", mlflow_store,
                                       "--samples", "5", "--seeds", "1"])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_scan_names_the_digits_victims_target_and_clears_the_clean_one(mlflow_store, digits_victim, clean_victim):
    runner = CliRunner()
    found = runner.invoke(main, ["scan", "--tracking-uri", mlflow_store, "--json"])
    assert found.exit_code == 0, found.output
    verdict = json.loads(found.stdout)
    assert verdict["backdoor"] is True and verdict["suspected_target"] == 0
    assert verdict["score"] > verdict["threshold"] and verdict["seconds"] > 0
    clean = runner.invoke(main, ["scan", "--tracking-uri", mlflow_store, "--poison-rate", "0"])
    assert clean.exit_code == 0, clean.output
    assert "no backdoor found" in clean.output
    refused = runner.invoke(main, ["scan", "--tracking-uri", mlflow_store, "--samples", "100000"])
    assert refused.exit_code != 0 and "unseen pool holds only" in refused.output and "Traceback" not in refused.output


def test_a_comparison_on_a_clean_victim_names_it_and_shows_what_removal_means_there_as_undefined(mlflow_store, clean_victim):
    """Poison rate 0 is a first-class victim: "clean victim" in the title and in MLflow, Score,
    ClassScore and DER undefined (null, "-"), the share of seeds flagged shown, nothing flagged."""
    import mlflow

    result = CliRunner().invoke(main, ["compare", "--tracking-uri", mlflow_store, "--poison-rate", "0", "--defense",
                                       "ours-proj:knowledge=none", "--defense", "basicft", "--seeds", "1",
                                       "--no-log-models", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "clean victim" in summary["title"] and summary["meta"]["victim_kind"] == "clean"
    assert "flagged" in summary["columns"] and "found" not in summary["columns"]
    ours, basic = summary["rows"]
    for row in (ours, basic):
        assert row["score_mean"] is None and row["der_mean"] is None and row["class_score_mean"] is None
        assert row["acc_mean"] is not None
    assert ours["flagged_mean"] == 0.0 and "flagged_mean" not in basic  # basicFT decides nothing
    run = mlflow.MlflowClient(mlflow_store).get_run(summary["runs"][0]["run_id"])
    assert run.data.params["victim_kind"] == "clean"
    assert run.data.metrics["detected"] == 0.0 and run.data.metrics["detected_class"] == -1.0
    assert "der" not in run.data.metrics


def test_a_comparison_on_the_backdoored_victim_shows_the_share_found_at_its_target(mlflow_store, digits_victim):
    result = CliRunner().invoke(main, ["compare", "--tracking-uri", mlflow_store, "--defense", "ours-proj:knowledge=none",
                                       "--defense", "ours-proj:knowledge=target", "--seeds", "1", "--no-log-models",
                                       "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "found" in summary["columns"] and summary["meta"]["victim_kind"] == "backdoored"
    none, target = summary["rows"]
    assert none["found_mean"] == 1.0 and none["der_mean"] is not None
    assert "found_mean" not in target  # the target was given: there was nothing to decide
    assert summary["runs"][0]["detection"]["target"] == 0 and summary["runs"][0]["detection"]["detected"] is True


def test_the_trigger_free_preset_covers_attacks_targets_victim_seeds_and_clean_victims():
    from bdtool.plugins import get_registries

    grid = get_registries().sweeps.get("trigger-free")
    kinds = {(v.kind, v.target) for v in grid.victims}
    assert kinds == {(k, t) for k in ("badnets", "blend", "wanet") for t in (0, 5)} | {("clean", 0)}
    assert all(len({v.seed for v in grid.victims if (v.kind, v.target) == kt}) >= 3 for kt in kinds)
    assert {"suppress-target", "ours-proj:knowledge=none", "ours-proj:knowledge=target", "ours-proj", "nc"} <= set(grid.rows)


def test_a_sweep_over_victims_runs_one_comparison_per_victim_and_summarises_per_kind(mlflow_store, monkeypatch):
    """A two-victim grid (the backdoored default and its clean twin) through ``bdtool sweep``: one
    comparison each, and the summary over victims per kind with the detection share."""
    from bdtool.core.experiment.sweeps import Sweep, SweepVictim
    from bdtool.plugins import get_registries

    small = Sweep("tiny-victims", "two victims", ["ours-proj:knowledge=none", "basicft"], [50],
                  victims=[SweepVictim("badnets", 0, 0.05, 0), SweepVictim("badnets", 0, 0.0, 0)])
    registry = get_registries().sweeps
    registry.register(small.name, small, "tests")
    try:
        result = CliRunner().invoke(main, ["sweep", small.name, "--seeds", "1", "--no-log-models", "--json",
                                           "--tracking-uri", mlflow_store, "--device", "cpu"])
    finally:
        registry.unregister(small.name)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [c["meta"]["victim_kind"] for c in payload["comparisons"]] == ["backdoored", "clean"]
    summary = {(e["kind"], e["row"]): e for e in payload["over_victims"]}
    backdoored = summary[("badnets", "Ours-proj (none)")]
    clean = summary[("clean", "Ours-proj (none)")]
    assert backdoored["victims"] == 1 and backdoored["found"] == 1.0 and backdoored["asr"] <= 0.05
    assert clean["flagged"] == 0.0 and clean["class_score"] is None and clean["acc_ratio"] == pytest.approx(1.0)
    assert summary[("clean", "basicFT (none)")]["flagged"] is None  # basicFT decides nothing
