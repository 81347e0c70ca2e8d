"""The baseline defenses (basicFT, actFT, NAD, BaEraser, Retraining) and the contract every
registered defense keeps (docs/architecture.md, "Threat models"): parametrised over the whole defense registry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from bdtool.core.errors import DefenseInputError, InvalidParameterError
from bdtool.core.interfaces import Defense
from bdtool.core.experiment.evaluation import evaluate
from bdtool.plugins import get_registries

DEFENSES = get_registries().defenses.names()
FAST = {"epochs": 2, "teacher_epochs": 1, "iterations": 20, "reverse_epochs": 2, "rounds": 1}
"""Shorter runs where a defense has these fields (keeps the contract tests fast)."""


def fast_params(cls: type[Defense]):
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    return cls.make_params({k: str(v) for k, v in FAST.items() if k in fields})


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_baselines_are_registered():
    for name in ("basicft", "actft", "nad", "baeraser", "retrain"):
        assert name in DEFENSES, get_registries().failures


@pytest.mark.parametrize("name", DEFENSES)
def test_defense_metadata(name):
    cls = get_registries().defenses.get(name)
    assert cls.name == name
    assert cls.label and cls.description
    assert dataclasses.is_dataclass(cls.Params)
    cls.make_params({})  # the defaults validate
    if cls.requires_trigger:
        assert cls.accepts_trigger


@pytest.mark.parametrize("n", [5, 50])
@pytest.mark.parametrize("name", DEFENSES)
def test_defense_contract(name, n, digits_victim, make_context):
    """Runs with n=5 and n=50, returns the same architecture, leaves the victim untouched."""
    cls = get_registries().defenses.get(name)
    defense = cls(fast_params(cls))
    # With the trigger whenever the defense can use it; without-trigger runs are checked below.
    bdk = cls.requires_trigger or cls.accepts_trigger
    ctx = make_context(n=n, bdk=bdk, seed=0, with_train=cls.needs_training_set)
    events: list[tuple] = []
    ctx.progress = lambda label, done, total: events.append(("progress", label, done, total))
    victim = digits_victim.model
    before = snapshot(victim)

    result = defense.defend(victim, ctx)

    assert isinstance(result, nn.Module)
    assert result is not victim
    got = result.state_dict()
    assert list(got) == list(before)
    for key, value in before.items():
        assert got[key].shape == value.shape, key
        if got[key].is_floating_point():
            assert torch.isfinite(got[key]).all(), key
    for key, value in victim.state_dict().items():
        assert torch.equal(value, before[key]), f"{name} modified the victim's {key}"
    out = result(digits_victim.data.evaluation.x[:4].to(ctx.device))
    assert out.shape == (4, digits_victim.data.num_classes)


@pytest.mark.parametrize("name", [n for n in DEFENSES if not get_registries().defenses.get(n).requires_trigger])
def test_defense_runs_without_trigger(name, digits_victim, make_context):
    cls = get_registries().defenses.get(name)
    ctx = make_context(n=5, bdk=False, seed=1, with_train=cls.needs_training_set)
    before = snapshot(digits_victim.model)
    result = cls(fast_params(cls)).defend(digits_victim.model, ctx)
    assert list(result.state_dict()) == list(before)
    for key, value in digits_victim.model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("name", [n for n in DEFENSES if get_registries().defenses.get(n).requires_trigger])
def test_trigger_defenses_refuse_without_trigger(name, digits_victim, make_context):
    cls = get_registries().defenses.get(name)
    ctx = make_context(n=5, bdk=False, with_train=cls.needs_training_set)
    with pytest.raises(DefenseInputError, match="trigger"):
        cls(fast_params(cls)).defend(digits_victim.model, ctx)


@pytest.mark.parametrize("name", ["basicft", "actft", "nad", "baeraser", "retrain"])
def test_bad_params_are_refused(name):
    cls = get_registries().defenses.get(name)
    with pytest.raises(InvalidParameterError):
        cls.make_params({"epochs": "0"})
    with pytest.raises(InvalidParameterError):
        cls.make_params({"lr": "-1"})


def test_training_baselines_log_and_report_progress(digits_victim, make_context):
    for name in ("basicft", "actft", "nad", "baeraser"):
        cls = get_registries().defenses.get(name)
        ctx = make_context(n=20, bdk=cls.requires_trigger)
        metrics: list[tuple] = []
        progress: list[tuple] = []
        ctx.log_metric = lambda key, value, step=None: metrics.append((key, value, step))
        ctx.progress = lambda label, done, total: progress.append((label, done, total))
        cls(fast_params(cls)).defend(digits_victim.model, ctx)
        assert metrics and all(k.startswith(name + ".") for k, _, _ in metrics), name
        assert progress and progress[-1][1] == progress[-1][2], name


def test_same_seed_same_model(digits_victim, make_context):
    cls = get_registries().defenses.get("basicft")
    a = cls(fast_params(cls)).defend(digits_victim.model, make_context(n=50, bdk=False, seed=3))
    b = cls(fast_params(cls)).defend(digits_victim.model, make_context(n=50, bdk=False, seed=3))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_actft_adds_stamped_copies_with_true_labels(digits_victim, make_context):
    from bdtool.defenses.actft import with_stamped_copies

    ctx = make_context(n=10)
    data = with_stamped_copies(ctx.unlearn, ctx.attack, 2, "actft")
    assert len(data) == 30
    assert torch.equal(data.y[10:20], ctx.unlearn.y) and torch.equal(data.y[20:], ctx.unlearn.y)
    assert torch.equal(data.x[10:20], ctx.attack.apply(ctx.unlearn.x))


def test_actft_removes_the_backdoor_with_50_samples(digits_victim, make_context):
    cls = get_registries().defenses.get("actft")
    model = cls().defend(digits_victim.model, make_context(n=50))
    result = evaluate(model, digits_victim.data.evaluation, digits_victim.attack, 10, torch.device("cpu"))
    assert result.asr <= 0.10
    assert result.acc >= 0.8


def test_baeraser_needs_non_target_samples(digits_victim, make_context):
    from bdtool.core.tensors import LabeledTensors

    cls = get_registries().defenses.get("baeraser")
    ctx = make_context(n=5)
    target = ctx.attack.target_class
    only_target = digits_victim.data.pool.y == target
    ctx.unlearn = LabeledTensors(digits_victim.data.pool.x[only_target][:5], digits_victim.data.pool.y[only_target][:5])
    with pytest.raises(DefenseInputError, match="target-class"):
        cls().defend(digits_victim.model, ctx)


def test_baeraser_stops_early_once_the_unlearning_asr_is_low(digits_victim, make_context):
    cls = get_registries().defenses.get("baeraser")
    ctx = make_context(n=50)
    metrics: list[tuple] = []
    ctx.log_metric = lambda key, value, step=None: metrics.append((key, value, step))
    # loss=margin: the paper's capped ascent has no gradient on a saturated backdoor (CE ≈ 0), which
    # some digits victims are (docs/baselines.md, "BaEraser's loss"); the stop is what is tested here.
    model = cls(cls.make_params({"epochs": "60", "loss": "margin"})).defend(digits_victim.model, ctx)
    asr = [v for k, v, _ in metrics if k == "baeraser.unlearn_asr"]
    epochs_run = [v for k, v, _ in metrics if k == "baeraser.epochs_run"][0]
    assert asr[0] > 0.9  # the victim's backdoor fires on triggered D_U
    assert asr[-1] < 0.05 and epochs_run < 60
    result = evaluate(model, digits_victim.data.evaluation, digits_victim.attack, 10, torch.device("cpu"))
    assert result.asr <= 0.2


def test_retrain_removes_the_backdoor(digits_victim, make_context):
    cls = get_registries().defenses.get("retrain")
    ctx = make_context(n=5, bdk=False, with_train=True)
    model = cls().defend(digits_victim.model, ctx)
    result = evaluate(model, digits_victim.data.evaluation, digits_victim.attack, 10, torch.device("cpu"))
    assert result.asr <= 0.10
    assert result.acc >= 0.9


def test_retrain_needs_the_training_set(digits_victim, make_context):
    cls = get_registries().defenses.get("retrain")
    with pytest.raises(DefenseInputError, match="training set"):
        cls().defend(digits_victim.model, make_context(n=5, with_train=False))


def test_reinitialise_resets_everything_or_refuses():
    from bdtool.plugins.builtin.models import SmallCNN
    from bdtool.defenses.retrain import reinitialise

    model = SmallCNN(1, 8, 10)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
        model.features[1].running_mean.fill_(3.0)
    torch.manual_seed(0)
    reinitialise(model)
    assert all(not torch.all(p == 7.0) for p in model.parameters())
    assert torch.all(model.features[1].running_mean == 0)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    with pytest.raises(DefenseInputError, match="reset_parameters"):
        reinitialise(nn.Sequential(nn.Linear(3, 3), Odd()))


# --------------------------------------------------------------------------- NAD layer groups


@pytest.mark.parametrize("arch,size,expected", [
    ("small-cnn", 8, ["features.5", "features.12"]),
    ("small-cnn", 28, ["features.5", "features.12"]),
    ("resnet18", 32, ["layer2", "layer3", "layer4"]),
    ("resnet18", 8, ["layer2", "layer3"]),  # layer4 is 1x1 on 8x8 inputs
    ("vgg", 32, ["features.13", "features.20", "features.27"]),
])
def test_nad_layer_groups_for_builtin_models(arch, size, expected):
    from bdtool.defenses.layer_groups import distillation_layers

    model = get_registries().models.get(arch)().build(1, size, 10)
    assert distillation_layers(model, torch.rand(1, 1, size, size)) == expected


def test_nad_layer_groups_fall_back_for_other_models():
    from bdtool.defenses.layer_groups import distillation_layers

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )
    # last module of each distinct 4-D shape: 4x16x16 (ReLU), 4x8x8 / 8x8x8 (pool, ReLU), 8x4x4 (pool)
    assert distillation_layers(model, torch.rand(1, 1, 16, 16), fallback_count=2) == ["4", "5"]


def test_nad_explicit_layers_are_checked():
    from bdtool.plugins.builtin.models import SmallCNN
    from bdtool.defenses.layer_groups import distillation_layers

    model = SmallCNN(1, 8, 10)
    x = torch.rand(1, 1, 8, 8)
    assert distillation_layers(model, x, ("features.2",)) == ["features.2"]
    with pytest.raises(DefenseInputError, match="unknown layer"):
        distillation_layers(model, x, ("features.99",))
    with pytest.raises(DefenseInputError, match="4-D"):
        distillation_layers(model, x, ("classifier.1",))


def test_nad_attention_map_is_normalised():
    from bdtool.defenses.nad import attention_map

    a = torch.randn(3, 5, 4, 4)
    am = attention_map(a, 2.0)
    assert am.shape == (3, 16)
    assert torch.allclose(am.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(attention_map(2 * a, 2.0), am, atol=1e-5)


def test_nad_with_explicit_layers_and_betas(digits_victim, make_context):
    cls = get_registries().defenses.get("nad")
    params = cls.make_params({"epochs": "1", "teacher_epochs": "1", "layers": "features.5+features.12",
                              "betas": "100+200"})
    cls(params).defend(digits_victim.model, make_context(n=5, bdk=False))
    with pytest.raises(InvalidParameterError):
        cls.make_params({"layers": "features.5", "betas": "1+2"})


def test_training_batches_never_leave_one_sample():
    import torch

    from bdtool.core.tensors import LabeledTensors

    for n in range(1, 300):
        data = LabeledTensors(torch.zeros(n, 1, 2, 2), torch.zeros(n, dtype=torch.long))
        sizes = [len(y) for _, y in data.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0), min_last=2)]
        assert sum(sizes) == n
        assert n == 1 or 1 not in sizes
    five = LabeledTensors(torch.zeros(5, 1, 2, 2), torch.zeros(5, dtype=torch.long))
    assert [len(y) for _, y in five.batches(64, min_last=2)] == [5]
