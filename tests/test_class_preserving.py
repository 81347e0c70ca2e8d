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
from bdtool.defenses.activation_subspace import edited_linear, project_out, trigger_subspace
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
    ("ours-proj:knowledge=none", "ours-proj"),
])
def test_bad_rows_are_refused_in_one_line_before_any_work(row, message, tmp_path):
    result = CliRunner().invoke(main, ["compare", "--defense", row, "--tracking-uri",
                                       f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched
