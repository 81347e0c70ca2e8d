"""Tests of the repair step (defenses/finetune_repair.py)."""

from __future__ import annotations

import pytest
import torch

from bdtool.core.errors import InvalidParameterError
from bdtool.core.experiment.evaluation import evaluate
from bdtool.defenses.activation_editing import ActivationEditing
from bdtool.defenses.finetune_repair import FinetuneRepair, FinetuneRepairParams


def test_registered_as_plugin():
    from bdtool.plugins import get_registries

    assert get_registries().repairs.get("finetune") is FinetuneRepair


def test_default_lr_is_the_rows_default_and_unlabelled():
    """``repair=0.01`` rows are labelled without η because 0.01 is the default; the repair's own
    default must be that same value, or an unlabelled row would silently use another η."""
    from bdtool.core.experiment.rows import DEFAULT_REPAIR_LR

    assert FinetuneRepairParams().lr == DEFAULT_REPAIR_LR
    assert FinetuneRepair().config(50).lr == DEFAULT_REPAIR_LR
    assert FinetuneRepair(FinetuneRepair.make_params({"lr": "0.5"})).config(50).lr == 0.5


@pytest.mark.parametrize("bad", [{"lr": "0"}, {"lr": "-1"}, {"epochs": "0"}, {"momentum": "1.5"}])
def test_bad_params(bad):
    with pytest.raises(InvalidParameterError):
        FinetuneRepair.make_params(bad)


def test_config_is_one_epoch_constant_lr_small_batches():
    repair = FinetuneRepair()
    assert repair.config(5).batch_size == 5
    assert repair.config(500).batch_size == 64
    cfg = repair.config(50)
    assert cfg.epochs == 1 and cfg.schedule == "constant" and cfg.lr == 1e-2 and cfg.momentum == 0.9


def test_runs_one_epoch_and_changes_weights(digits_victim, make_context, monkeypatch):
    steps = []
    real_step = torch.optim.SGD.step

    def counting_step(self, *args, **kwargs):
        steps.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counting_step)
    ctx = make_context(n=100, bdk=True, seed=0)
    edited = ActivationEditing().defend(digits_victim.model, ctx)
    before = {k: v.clone() for k, v in edited.state_dict().items()}
    repaired = FinetuneRepair(FinetuneRepair.make_params({"lr": "0.01"})).repair(edited, ctx)
    assert len(steps) == 2  # 100 samples, batch size 64: one epoch = 2 steps
    assert steps == [0.01, 0.01]  # constant schedule
    changed = [k for k, v in repaired.state_dict().items() if k.endswith("weight") and not torch.equal(v, before[k])]
    assert changed, "the repair must change weights"
    for key, value in edited.state_dict().items():  # repair() works on a copy
        assert torch.equal(value, before[key])
    assert not repaired.training


def test_repair_is_seeded(digits_victim, make_context):
    ctx = make_context(n=50, bdk=True, seed=4)
    edited = ActivationEditing().defend(digits_victim.model, ctx)
    a = FinetuneRepair().repair(edited, ctx)
    b = FinetuneRepair().repair(edited, ctx)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])


def test_repair_keeps_the_model_usable(digits_victim, make_context):
    ctx = make_context(n=100, bdk=True, seed=0)
    edited = ActivationEditing().defend(digits_victim.model, ctx)
    repaired = FinetuneRepair().repair(edited, ctx)
    result = evaluate(repaired, digits_victim.data.evaluation, digits_victim.attack, 10, torch.device("cpu"))
    assert result.acc > 0.5
