"""Tests of the "ours" defense (defenses/activation_editing.py) on the real digits victim."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bdtool.core.errors import DefenseInputError, InvalidParameterError
from bdtool.core.interfaces import Attack
from bdtool.core.experiment.evaluation import evaluate
from bdtool.defenses.activation_editing import (
    ActivationEditing,
    ActivationEditingParams,
    parse_layer_spec,
    select_edited_layers,
)

CPU = torch.device("cpu")


def make_defense(**options) -> ActivationEditing:
    return ActivationEditing(ActivationEditing.make_params(options))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class CountingAttack(Attack):
    """Wraps the victim's attack and counts how often the trigger is used."""

    name = "counting"

    def __init__(self, inner: Attack) -> None:
        super().__init__(inner.target_class)
        self.inner = inner
        self.calls = 0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner.apply(x)


def reference_means(model: nn.Module, module: nn.Module, x: torch.Tensor, unit_dim: int) -> torch.Tensor:
    """Per-unit mean output of ``module`` over ``x``, computed independently of the defense."""
    captured = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o.detach().double().clone()))
    model.eval()
    with torch.no_grad():
        model(x)
    handle.remove()
    out = captured[0]
    dims = [d for d in range(out.dim()) if d != unit_dim % out.dim()]
    return out.mean(dim=dims)


# --------------------------------------------------------------------------- registration and params


def test_registered_as_plugin():
    from bdtool.plugins import get_registries

    cls = get_registries().defenses.get("ours")
    assert cls is ActivationEditing
    assert cls.label == "Ours" and cls.requires_trigger is False and cls.accepts_trigger is True


def test_defaults_match_the_supplement():
    p = ActivationEditingParams()
    assert (p.lam, p.gamma, p.alpha, p.beta) == (1.0, 0.5, 0.0, -1.0)
    assert p.bn == "auto" and p.activation == "pre"


@pytest.mark.parametrize("bad", [{"gamma": "-0.1"}, {"layers": "last0"}, {"layers": "a++b"},
                                 {"bn": "frozen"}, {"activation": "mid"}, {"nobdk_source": "some"},
                                 {"batch_size": "0"}, {"lam": "nan"}])
def test_bad_params_are_clear_errors(bad):
    with pytest.raises(InvalidParameterError):
        ActivationEditing.make_params(bad)


def test_layer_specs(digits_victim):
    model = digits_victim.model
    x = digits_victim.data.pool.x[:2]
    assert parse_layer_spec("classifier") == ("last", 1)
    assert [n for n, _ in select_edited_layers(model, "last1", x)] == ["classifier.3"]
    assert [n for n, _ in select_edited_layers(model, "last2", x)] == ["classifier.1", "classifier.3"]
    # digits: 8x8 -> pool -> 4x4 (conv 3, 4) -> pool -> 2x2; the last stage is conv 3, 4 and the head.
    assert [n for n, _ in select_edited_layers(model, "after-downsampling", x)] == [
        "features.7", "features.10", "classifier.1", "classifier.3"]
    assert len(select_edited_layers(model, "all", x)) == 6
    assert [n for n, _ in select_edited_layers(model, "features.10+classifier.3", x)] == ["features.10", "classifier.3"]
    with pytest.raises(DefenseInputError, match="classifier.3"):
        select_edited_layers(model, "classifier.9", x)
    with pytest.raises(DefenseInputError, match="BatchNorm2d"):
        select_edited_layers(model, "features.1", x)


# --------------------------------------------------------------------------- the edit itself


@pytest.mark.parametrize("bdk", [True, False])
def test_edit_is_exactly_unit_scaling_of_the_chosen_layers(digits_victim, make_context, bdk):
    ctx = make_context(n=20, bdk=bdk, seed=1)
    defense = make_defense(layers="last2", bn="fixed", nobdk_source="all", gamma=0.5, lam=1.0)
    before = state(digits_victim.model)
    model = defense.defend(digits_victim.model, ctx)
    after = state(model)

    x = ctx.attack.apply(ctx.unlearn.x) if bdk else ctx.unlearn.x
    victim = copy.deepcopy(digits_victim.model)
    edited = {"classifier.1", "classifier.3"}
    for name in edited:
        module = dict(victim.named_modules())[name]
        a = -reference_means(victim, module, x, -1)  # alpha=0, beta=-1
        factors = (1.0 + 0.5 * (a - a.mean()) / a.std(correction=0)).float()
        torch.testing.assert_close(after[f"{name}.weight"], before[f"{name}.weight"] * factors[:, None],
                                   rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(after[f"{name}.bias"], before[f"{name}.bias"] * factors, rtol=1e-6, atol=1e-7)
    touched = {f"{n}.{p}" for n in edited for p in ("weight", "bias")}
    for key in before:
        if key not in touched:
            assert torch.equal(before[key], after[key]), key


def test_conv_layers_are_scaled_per_channel(digits_victim, make_context):
    ctx = make_context(n=20, bdk=True, seed=0)
    before = state(digits_victim.model)
    model = make_defense(layers="features.10", bn="fixed").defend(digits_victim.model, ctx)
    victim = copy.deepcopy(digits_victim.model)
    conv = dict(victim.named_modules())["features.10"]
    a = -reference_means(victim, conv, ctx.attack.apply(ctx.unlearn.x), 1)
    factors = (1.0 + 0.5 * (a - a.mean()) / a.std(correction=0)).float()
    torch.testing.assert_close(model.state_dict()["features.10.weight"],
                               before["features.10.weight"] * factors.view(-1, 1, 1, 1), rtol=1e-6, atol=1e-7)
    for key, value in model.state_dict().items():
        if key != "features.10.weight":
            assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("bdk", [True, False])
def test_gamma_zero_changes_nothing_bit_for_bit(digits_victim, make_context, bdk):
    before = state(digits_victim.model)
    model = make_defense(gamma=0.0, bn="fixed", layers="all").defend(digits_victim.model, make_context(n=5, bdk=bdk))
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_gamma_zero_with_other_lambda_scales_uniformly(digits_victim, make_context):
    before = state(digits_victim.model)
    model = make_defense(gamma=0.0, lam=0.5, bn="fixed", layers="last1").defend(digits_victim.model, make_context())
    assert torch.equal(model.state_dict()["classifier.3.weight"], before["classifier.3.weight"] * 0.5)


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def test_bn_fixed_keeps_running_stats_and_update_changes_them(digits_victim, make_context):
    victim_bn = _bn_buffers(digits_victim.model)
    fixed = make_defense(bn="fixed", layers="last2").defend(digits_victim.model, make_context(n=20, bdk=False))
    for key, value in _bn_buffers(fixed).items():
        assert torch.equal(value, victim_bn[key]), key
    updated = make_defense(bn="update", layers="last2", nobdk_source="all").defend(
        digits_victim.model, make_context(n=20, bdk=False))
    changed = [k for k, v in _bn_buffers(updated).items() if "running_mean" in k and not torch.equal(v, victim_bn[k])]
    assert len(changed) == 4  # every BN layer saw D_U
    assert all(not m.training for m in updated.modules()), "the defended model comes back in eval mode"


def test_bn_auto_is_fixed_with_bdk_and_update_without(digits_victim, make_context):
    victim_bn = _bn_buffers(digits_victim.model)
    with_bdk = make_defense().defend(digits_victim.model, make_context(n=5, bdk=True))
    assert all(torch.equal(v, victim_bn[k]) for k, v in _bn_buffers(with_bdk).items())
    without = make_defense(nobdk_source="all").defend(digits_victim.model, make_context(n=5, bdk=False))
    assert any(not torch.equal(v, victim_bn[k]) for k, v in _bn_buffers(without).items())


def test_bdk_uses_the_trigger_and_no_bdk_never_does(digits_victim, make_context):
    counting = CountingAttack(digits_victim.attack)
    ctx = make_context(n=5, bdk=True)
    ctx.attack = counting
    make_defense().defend(digits_victim.model, ctx)
    assert counting.calls == 1  # alpha=0: only the poisoned activation set is extracted

    counting.calls = 0
    make_defense(alpha=1.0).defend(digits_victim.model, ctx)
    assert counting.calls == 1

    for source in ("all", "target", "inferred"):
        ctx = make_context(n=5, bdk=False)
        assert ctx.attack is None
        # Even if the trigger sits somewhere reachable, the ¬BDK path must not use it.
        counting.calls = 0
        original = digits_victim.attack.apply
        digits_victim.attack.apply = counting.apply  # type: ignore[method-assign]
        try:
            make_defense(nobdk_source=source).defend(digits_victim.model, ctx)
        finally:
            digits_victim.attack.apply = original  # type: ignore[method-assign]
        assert counting.calls == 0, source


def test_constant_activation_is_a_clear_error_not_nan(digits_victim, make_context):
    before = state(digits_victim.model)
    ctx = make_context(n=5, bdk=True)
    with pytest.raises(DefenseInputError, match="standard deviation 0"):
        make_defense(alpha=0.0, beta=0.0).defend(digits_victim.model, ctx)
    with pytest.raises(DefenseInputError, match="standard deviation 0"):
        make_defense(alpha=1.0, beta=-1.0, nobdk_source="all").defend(digits_victim.model, make_context(bdk=False))

    # A layer whose units all respond identically: zero the classifier's weights and biases.
    model = copy.deepcopy(digits_victim.model)
    with torch.no_grad():
        model.classifier[3].weight.zero_()
        model.classifier[3].bias.zero_()
    defense = make_defense(layers="last1")
    with pytest.raises(DefenseInputError, match="classifier.3"):
        defense.apply(model, ctx)
    assert torch.isfinite(model.classifier[3].weight).all()
    for key, value in digits_victim.model.state_dict().items():
        assert torch.equal(value, before[key])


def test_target_source_needs_target_and_pool(digits_victim, make_context):
    ctx = make_context(n=5, bdk=False)
    ctx.draw_unlearn = None
    with pytest.raises(DefenseInputError, match="target"):
        make_defense(nobdk_source="target").defend(digits_victim.model, ctx)
    ctx = make_context(n=5, bdk=False)
    ctx.target_class = None
    with pytest.raises(DefenseInputError, match="target"):
        make_defense(nobdk_source="target").defend(digits_victim.model, ctx)


def test_inferred_source_logs_the_class(digits_victim, make_context):
    logged: dict[str, float] = {}
    ctx = make_context(n=5, bdk=False)
    ctx.log_metric = lambda key, value, step=None: logged.__setitem__(key, value)
    drawn: list[int | None] = []
    draw = ctx.draw_unlearn
    ctx.draw_unlearn = lambda only_class=None: (drawn.append(only_class), draw(only_class))[1]
    make_defense(nobdk_source="inferred").defend(digits_victim.model, ctx)
    assert "ours.inferred_target" in logged
    assert drawn == [int(logged["ours.inferred_target"])]


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("bdk", [True, False])
def test_removes_the_backdoor_on_digits(digits_victim, make_context, bdk):
    assert digits_victim.before.asr > 0.9
    before = state(digits_victim.model)
    model = make_defense().defend(digits_victim.model, make_context(n=5, bdk=bdk, seed=0))
    result = evaluate(model, digits_victim.data.evaluation, digits_victim.attack, 10, CPU)
    assert result.asr <= 0.10
    assert result.acc >= 0.8  # only the target class is lost (CTCA 0, as in the supplement)
    after = digits_victim.model.state_dict()
    for key in before:  # the victim passed in is untouched
        assert torch.equal(before[key], after[key]), key
    assert not any(m.training for m in digits_victim.model.modules())


def test_same_seed_same_result(digits_victim, make_context):
    a = make_defense(nobdk_source="all").defend(digits_victim.model, make_context(n=5, bdk=False, seed=3))
    b = make_defense(nobdk_source="all").defend(digits_victim.model, make_context(n=5, bdk=False, seed=3))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])


def test_post_activation_reads_after_bn_and_relu(digits_victim, make_context):
    ctx = make_context(n=20, bdk=True)
    victim = copy.deepcopy(digits_victim.model)
    relu = victim.features[12]  # conv features.10 -> BN features.11 -> ReLU features.12
    assert isinstance(relu, nn.ReLU)
    a = -reference_means(victim, relu, ctx.attack.apply(ctx.unlearn.x), 1)
    factors = (1.0 + 0.5 * (a - a.mean()) / a.std(correction=0)).float()
    model = make_defense(layers="features.10", activation="post", bn="fixed").defend(digits_victim.model, ctx)
    torch.testing.assert_close(model.features[10].weight, victim.features[10].weight * factors.view(-1, 1, 1, 1),
                               rtol=1e-6, atol=1e-7)
