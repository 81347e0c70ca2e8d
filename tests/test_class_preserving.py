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
from bdtool.defenses.activation_subspace import (chosen_scale, edited_linear, layer_inputs, predictions_per_scale,
                                                  project_out, trigger_subspace)
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


def test_the_edit_is_exact_on_the_clean_mean_and_blind_to_the_subspace():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    original = nn.Linear(6, 3)
    original.load_state_dict(layer.state_dict())
    diff = torch.randn(20, 6, dtype=torch.float64)
    basis = trigger_subspace(diff, energy=0.9, rank=2)
    assert basis.shape == (6, 2)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-10)
    mean = torch.randn(6, dtype=torch.float64)
    project_out(layer, basis, mean)
    with torch.no_grad():
        m = mean.float()
        assert torch.allclose(layer(m), original(m), atol=1e-5)  # the clean mean goes through unchanged
        step = (basis @ torch.tensor([3.0, -2.0], dtype=torch.float64)).float()
        a = torch.randn(6)
        assert torch.allclose(layer(a + step), layer(a), atol=1e-5)  # moves inside the subspace do nothing
        assert not torch.allclose(layer(a), original(a), atol=1e-3)


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
    ("ours-proj:rank=-1", "rank must be >= 0"),
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


def test_the_strength_search_keeps_more_of_the_class_than_the_full_projection(digits_victim, make_context):
    """scale=auto with the trigger (the search) stops before s = 1 and keeps more of the target
    class than removing the subspace outright, with the backdoor still removed."""
    ctx = make_context(n=50, seed=0)
    full = defended(digits_victim, ctx, "ours-proj", {"scale": "1"})
    searched = defended(digits_victim, ctx, "ours-proj")
    assert searched.asr <= 0.05 and full.asr <= 0.05
    assert searched.ctca > full.ctca
    assert searched.acc >= full.acc


def test_without_the_trigger_the_reversed_trigger_removes_the_backdoor_and_keeps_the_class(digits_victim, make_context):
    """knowledge=target: Neural Cleanse's trigger for the known target stands in for the trigger;
    the class survives where the classifier edit (and the null row) delete it."""
    ctx = make_context(n=50, seed=0, bdk=False)
    assert ctx.attack is None and ctx.target_class == digits_victim.attack.target_class
    logged: dict[str, float] = {}
    ctx.log_metric = lambda key, value, step=None: logged.__setitem__(key, value)
    result = defended(digits_victim, ctx, "ours-proj", {"search_epochs": "40"})
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
def test_one_pass_scoring_of_every_strength_equals_editing_a_copy_per_strength(bound):
    torch.manual_seed(1)
    model = _BatchBound() if bound else nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    layer = model.fc1 if bound else model[0]
    x, shifted = torch.randn(40, 5), torch.randn(40, 5) + 2.0
    clean, stamped = layer_inputs(model, layer, x, CPU, 16), layer_inputs(model, layer, shifted, CPU, 16)
    basis = trigger_subspace(stamped - clean, 0.9, 2)
    scales = [0.25, 0.5, 0.75, 1.0]
    predicted = predictions_per_scale(model, layer, shifted, basis, clean.mean(0), scales, CPU, 16)
    assert predicted.shape == (4, 40)
    import copy
    for i, s in enumerate(scales):
        edited = copy.deepcopy(model)
        project_out(edited.fc1 if bound else edited[0], basis, clean.mean(0), s)
        with torch.no_grad():
            assert torch.equal(predicted[i], edited(shifted).argmax(1))
    assert torch.equal(layer_inputs(model, layer, x, CPU, 16), clean)  # the model itself is untouched


def test_the_search_takes_the_smallest_strength_within_tolerance():
    scales = [0.25, 0.5, 0.75, 1.0]
    assert chosen_scale(torch.tensor([0.9, 0.2, 0.0, 0.0], dtype=torch.float64), scales, 0.0) == (0.75, True)
    assert chosen_scale(torch.tensor([0.9, 0.2, 0.0, 0.0], dtype=torch.float64), scales, 0.25) == (0.5, True)
    assert chosen_scale(torch.tensor([0.9, 0.5, 0.3, 0.1], dtype=torch.float64), scales, 0.0) == (1.0, False)
