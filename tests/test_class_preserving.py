"""The class-preserving edit ``ours-proj`` (defenses/activation_subspace.py): it removes the
backdoor and keeps the target class where the classifier edit ``ours`` deletes it; its maths;
its parameter and layer errors."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from bdtool.cli import main
from bdtool.core.errors import DefenseInputError
from bdtool.core.experiment.evaluation import evaluate
from bdtool.defenses.activation_subspace import (chosen_edit, clean_whitening, edit_directions, edited_linear,
                                                  layer_inputs, predictions_per_edit, project_out, removal_operator,
                                                  trigger_subspace)
from bdtool.plugins import get_registries

CPU = torch.device("cpu")


def defended(victim, ctx, name: str, options: dict[str, str] | None = None):
    cls = get_registries().defenses.get(name)
    model = cls(cls.make_params(options or {})).defend(victim.fresh_copy(), ctx)
    return evaluate(model, victim.data.evaluation, victim.attack, victim.bundle.num_classes, CPU)


@pytest.mark.parametrize("seed", [0, 1])
def test_removes_the_backdoor_and_keeps_the_class_the_classifier_edit_deletes(digits_victim, make_context, seed):
    ctx = make_context(n=50, seed=seed)
    before = digits_victim.before
    ours = defended(digits_victim, ctx, "ours")
    proj = defended(digits_victim, ctx, "ours-proj")
    assert ours.ctca == 0.0 and ours.asr == 0.0  # the classifier edit removes the class with the backdoor
    assert proj.asr <= 0.05 < before.asr
    assert proj.ctca >= 0.5 * before.ctca  # the class is kept: not "[class removed]"
    assert proj.acc >= 0.9 * before.acc


@pytest.mark.parametrize("shrinkage", [1.0, 0.05])
def test_the_edit_is_exact_on_the_clean_mean_and_blind_to_the_subspace(shrinkage):
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    original = nn.Linear(6, 3)
    original.load_state_dict(layer.state_dict())
    clean = torch.randn(30, 6, dtype=torch.float64) * torch.tensor([5.0, 1, 1, 0.2, 1, 3], dtype=torch.float64)
    whitening = clean_whitening(clean, shrinkage)
    half, inv_half = whitening.matrix(0.5), whitening.matrix(-0.5)
    assert torch.allclose(half @ inv_half, torch.eye(6, dtype=torch.float64), atol=1e-10)
    diff = torch.randn(20, 6, dtype=torch.float64)
    assert torch.allclose(whitening.times(diff, -0.5), diff @ inv_half, atol=1e-10)
    basis = trigger_subspace(diff @ inv_half, energy=0.9, rank=2)
    assert basis.shape == (6, 2)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-10)
    operator = removal_operator(basis, whitening)
    assert torch.allclose(operator @ operator, operator, atol=1e-10)  # a projection
    if shrinkage == 1.0:  # no whitening: the orthogonal projection onto the subspace
        assert torch.allclose(operator, basis @ basis.T, atol=1e-10)
    else:
        assert not torch.allclose(operator, operator.T, atol=1e-3)  # oblique: measured against Σ
    mean = clean.mean(0)
    project_out(layer, operator, mean)
    with torch.no_grad():
        m = mean.float()
        assert torch.allclose(layer(m), original(m), atol=1e-5)  # the clean mean goes through unchanged
        step = (half @ basis @ torch.tensor([3.0, -2.0], dtype=torch.float64)).float()
        a = torch.randn(6)
        assert torch.allclose(layer(a + step), layer(a), atol=1e-5)  # moves along the removed directions do nothing
        assert not torch.allclose(layer(a), original(a), atol=1e-3)


def test_whitening_shrinks_toward_the_scaled_identity_and_survives_a_singular_covariance():
    clean = torch.randn(4, 10, dtype=torch.float64)  # 4 samples in 10 dimensions: Σ has rank 3
    whitening = clean_whitening(clean, 0.05)
    half, inv_half = whitening.matrix(0.5), whitening.matrix(-0.5)
    assert torch.isfinite(inv_half).all()
    level = torch.cov(clean.T).trace() / 10
    shrunk = 0.95 * torch.cov(clean.T) + 0.05 * level * torch.eye(10, dtype=torch.float64)
    assert torch.allclose(half @ half, shrunk, atol=1e-10)
    assert torch.allclose(inv_half @ shrunk @ inv_half, torch.eye(10, dtype=torch.float64), atol=1e-8)
    half = clean_whitening(clean, 1.0).matrix(0.5)
    assert torch.allclose(half, level.sqrt() * torch.eye(10, dtype=torch.float64), atol=1e-10)
    same = torch.ones(5, 3, dtype=torch.float64)  # no spread at all: nothing to whiten against
    assert all(torch.equal(clean_whitening(same, 0.05).matrix(e), torch.eye(3, dtype=torch.float64)) for e in (0.5, -0.5))


def test_energy_picks_the_smallest_rank_holding_that_share():
    diff = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))  # squared: 9, 4, 1 of 14
    assert trigger_subspace(diff, 0.6, 0).shape[1] == 1  # 9/14 = 0.64
    assert trigger_subspace(diff, 0.9, 0).shape[1] == 2  # 13/14 = 0.93
    assert trigger_subspace(diff, 1.0, 0).shape[1] == 3
    with pytest.raises(DefenseInputError, match="rank=4 exceeds"):
        trigger_subspace(diff, 0.9, 4)
    with pytest.raises(DefenseInputError, match="changes nothing"):
        trigger_subspace(torch.zeros(3, 3, dtype=torch.float64), 0.9, 1)


def test_layer_errors_name_the_choices(digits_victim):
    model = digits_victim.fresh_copy()
    assert edited_linear(model, "auto")[0] == "classifier.1"
    with pytest.raises(DefenseInputError, match=r"no module named 'classifier\.9'.*Linear layers: classifier\.1, "):
        edited_linear(model, "classifier.9")
    with pytest.raises(DefenseInputError, match="'features.0' is a Conv2d, not a Linear layer"):
        edited_linear(model, "features.0")


@pytest.mark.parametrize("row, message", [
    ("ours-proj:energy=1.5", "energy must be in (0, 1]"),
    ("ours-proj:rank=-1", "rank must be >= 0, got -1"),
    ("ours-proj:rank=many", "rank"),
    ("ours-proj:max_rank=0", "max_rank must be >= 1"),
    ("ours-proj:shrinkage=0", "shrinkage must be in (0, 1]"),
    ("ours-proj:scale=1.5", "scale must be auto, search or a number in (0, 1]"),
    ("ours-proj:scale=strong", "scale must be auto, search or a number in (0, 1]"),
    ("ours-proj:scale_steps=0", "scale_steps must be >= 1"),
    ("ours-proj:tolerance=1", "tolerance must be in [0, 1)"),
    ("ours-proj:search_epochs=0", "search_epochs must be >= 1"),
    ("ours-proj:unflagged=guess", "unflagged"),
])
def test_bad_rows_are_refused_in_one_line_before_any_work(row, message, tmp_path):
    result = CliRunner().invoke(main, ["compare", "--defense", row, "--tracking-uri",
                                       f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched


def test_the_whitened_edit_keeps_more_of_the_class_than_the_orthogonal_projection(digits_victim, make_context):
    """shrinkage < 1 (the default) measures the trigger's directions against the clean spread and
    keeps more of the target class than the first release's orthogonal projection (shrinkage=1,
    rank 1, s = 1), with the backdoor removed by both; the search picks a strength in (0, 1]."""
    ctx = make_context(n=50, seed=0)
    orthogonal = defended(digits_victim, ctx, "ours-proj", {"shrinkage": "1", "rank": "1"})
    whitened = defended(digits_victim, ctx, "ours-proj")
    assert whitened.asr <= 0.05 and orthogonal.asr <= 0.05
    assert whitened.ctca > orthogonal.ctca
    assert whitened.acc >= orthogonal.acc
    logged: dict[str, float] = {}
    ctx.log_metric = lambda key, value, step=None: logged.__setitem__(key, value)
    searched = defended(digits_victim, ctx, "ours-proj", {"scale": "search"})
    assert 0.0 < logged["ours-proj.scale"] <= 1.0 and logged["ours-proj.stamped_target_rate"] == 0.0
    assert searched.asr <= 0.1


def test_without_the_trigger_the_reversed_trigger_removes_the_backdoor_and_keeps_the_class(digits_victim, make_context):
    """knowledge=target, search=nc: Neural Cleanse's trigger for the known target stands in for the trigger;
    the class survives where the classifier edit (and the null row) delete it."""
    ctx = make_context(n=50, seed=0, bdk=False)
    assert ctx.attack is None and ctx.target_class == digits_victim.attack.target_class
    logged: dict[str, float] = {}
    ctx.log_metric = lambda key, value, step=None: logged.__setitem__(key, value)
    result = defended(digits_victim, ctx, "ours-proj", {"search": "nc", "search_epochs": "40"})
    before = digits_victim.before
    assert result.asr <= 0.05 < before.asr
    assert result.ctca >= 0.5 * before.ctca
    assert result.acc >= 0.9 * before.acc
    assert logged["ours-proj.scale"] == 1.0  # auto without the trigger: the full projection
    assert logged["ours-proj.search_seconds"] > 0 and logged["ours-proj.trigger_success"] >= 0.99


class _BatchBound(nn.Module):
    """A head whose output keeps only as many rows as the input had: not per-sample after the
    edited layer, so the one-pass scoring must fall back to one pass per strength."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))[: len(x)]


@pytest.mark.parametrize("bound", [False, True])
def test_one_pass_scoring_of_every_edit_equals_editing_a_copy_per_edit(bound):
    torch.manual_seed(1)
    model = _BatchBound() if bound else nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    layer = model.fc1 if bound else model[0]
    x, shifted = torch.randn(40, 5), torch.randn(40, 5) + 2.0
    clean, stamped = layer_inputs(model, layer, x, CPU, 16), layer_inputs(model, layer, shifted, CPU, 16)
    whitening = clean_whitening(clean, 0.05)
    basis = trigger_subspace(whitening.times(stamped - clean, -0.5), 0.9, 3)
    left, right = edit_directions(basis, whitening)
    ranks = [1, 3]
    scales = [0.25, 0.5, 0.75, 1.0]
    predicted = predictions_per_edit(model, layer, shifted, left, right, ranks, clean.mean(0), scales, CPU, 16)
    assert predicted.shape == (2, 4, 40)
    import copy
    for i, op in enumerate(removal_operator(basis[:, :r], whitening) for r in ranks):
        for j, s in enumerate(scales):
            edited = copy.deepcopy(model)
            project_out(edited.fc1 if bound else edited[0], op, clean.mean(0), s)
            with torch.no_grad():
                assert torch.equal(predicted[i, j], edited(shifted).argmax(1))
    assert torch.equal(layer_inputs(model, layer, x, CPU, 16), clean)  # the model itself is untouched


def test_the_search_takes_the_smallest_rank_then_the_smallest_strength_within_tolerance():
    scales = [0.25, 0.5, 0.75, 1.0]
    one = torch.tensor([[0.9, 0.2, 0.0, 0.0]], dtype=torch.float64)
    assert chosen_edit(one, scales, 0.0) == (0, 0.75, True)
    assert chosen_edit(one, scales, 0.25) == (0, 0.5, True)
    grid = torch.tensor([[0.9, 0.5, 0.3, 0.1], [0.8, 0.4, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert chosen_edit(grid, scales, 0.0) == (1, 0.75, True)  # rank 2 is the first to reach; rank 3 not needed
    never = torch.tensor([[0.9, 0.5, 0.3, 0.2], [0.8, 0.4, 0.2, 0.1], [0.5, 0.3, 0.2, 0.1]], dtype=torch.float64)
    assert chosen_edit(never, scales, 0.0) == (1, 1.0, False)  # the lowest rate at full strength, smaller rank on a tie
