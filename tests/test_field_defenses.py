"""The field's defenses of issue 11: Fine-Pruning (``fp``), ANP (``anp``), Neural Cleanse (``nc``)
and I-BAU (``ibau``), discovered through the real entry points, on the real digits victim.

Per defense: registered with its threat model, runs at n = 5 and 50 and leaves the victim
untouched, and on the digits BadNets victim either removes the backdoor (where its paper says it
should and it does here) or the test states the measured shortfall (docs/baselines.md, "The
field's defenses").
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from bdtool.cli import main
from bdtool.core.experiment.evaluation import accuracy, evaluate
from bdtool.core.experiment.rows import default_row_texts
from bdtool.core.interfaces import Knowledge
from bdtool.plugins import get_registries

FIELD = ("fp", "anp", "nc", "ibau")
QUICK = {"fp": {"epochs": "3"}, "anp": {"iterations": "40"}, "nc": {"reverse_epochs": "6", "epochs": "3"},
         "ibau": {"rounds": "2"}}
"""Shorter runs for the contract tests (the defaults are measured in docs/baselines.md)."""


def defense(name: str, **options: str):
    cls = get_registries().defenses.get(name)
    return cls(cls.make_params(options))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def logger():
    logged: dict[str, float] = {}
    steps: dict[str, dict[int, float]] = {}

    def log(key: str, value: float, step: int | None = None) -> None:
        logged[key] = value
        if step is not None:
            steps.setdefault(key, {})[step] = value

    return logged, steps, log


def clean_removal(result, before) -> bool:
    """The backdoor is gone (ASR ≤ 10 %) and the accuracy kept (at most 5 points lost)."""
    return result.asr <= 0.1 and result.acc >= before.acc - 0.05


def run(name: str, victim, make_context, n: int, seed: int = 0, **options: str):
    ctx = make_context(n=n, bdk=False, seed=seed)
    logged, steps, log = logger()
    progress: list[tuple[str, int, int]] = []
    ctx.log_metric = log
    ctx.progress = lambda label, done, total: progress.append((label, done, total))
    torch.manual_seed(seed)
    model = defense(name, **options).defend(victim.model, ctx)
    result = evaluate(model, victim.data.evaluation, victim.attack, victim.data.num_classes, ctx.device)
    return model, result, logged, steps, progress, ctx


@pytest.mark.parametrize("name", FIELD)
def test_registered_through_entry_points_with_its_threat_model(name):
    regs = get_registries()
    entry = next(e for e in regs.defenses if e.name == name)
    assert entry.source == name  # our own entry point, like a third party's
    cls = entry.obj
    # None of the four needs or uses the trigger or the target label (NC finds the target itself).
    assert not (cls.requires_trigger or cls.accepts_trigger or cls.requires_target_label or cls.accepts_target_label)
    assert cls.usable_knowledge() == (Knowledge.NONE,)
    assert cls.effective_knowledge(Knowledge.TRIGGER) is Knowledge.NONE
    assert not cls.in_default_comparison
    assert all(t.partition(":")[0] != name for t in default_row_texts(regs))


def test_bdtool_list_json_shows_them():
    result = CliRunner().invoke(main, ["list", "defenses", "--json"])
    assert result.exit_code == 0, result.output
    listed = {d["name"]: d for d in json.loads(result.output)["defenses"]}
    for name in FIELD:
        assert listed[name]["distribution"] == "bdtool"
        assert listed[name]["usable_knowledge"] == ["none"]
        assert listed[name]["default_rows"] == []  # only when named (too slow for the default comparison)
    assert listed["anp"]["params"]["iterations"] == 2000 and listed["nc"]["params"]["anomaly_threshold"] == 2.0


@pytest.mark.parametrize("n", [5, 50])
@pytest.mark.parametrize("name", FIELD)
def test_runs_at_small_n_and_leaves_the_victim_untouched(name, n, digits_victim, make_context):
    before = state(digits_victim.model)
    model, result, logged, _, progress, _ = run(name, digits_victim, make_context, n, **QUICK[name])
    for key, value in digits_victim.model.state_dict().items():
        assert torch.equal(value, before[key]), f"{name} changed the victim's {key}"
    assert model is not digits_victim.model and not model.training
    assert list(model.state_dict()) == list(before)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert progress and progress[-1][1] == progress[-1][2]  # long loops report progress, and finish
    assert logged and all(k.startswith(f"{name}.") for k in logged)
    assert 0.0 <= result.acc <= 1.0
    if name != "nc":  # NC returns the model unchanged when it flags no class
        assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()), f"{name} did nothing"


# --------------------------------------------------------------------------- Fine-Pruning


def test_fp_prunes_the_least_active_channels_and_keeps_them_pruned(digits_victim, make_context):
    from bdtool.defenses._pruning import last_conv
    from bdtool.defenses.fp import mean_channel_activation

    ctx = make_context(n=50, bdk=False)
    victim = digits_victim.model
    _, _, bn = last_conv(victim, "fp")
    bn_name = next(n for n, m in victim.named_modules() if m is bn)
    activity = mean_channel_activation(victim, bn_name, ctx.unlearn, ctx.device)
    model, _, logged, _, _, ctx = run("fp", digits_victim, make_context, 50, epochs="3")
    k = int(logged["fp.pruned_channels"])
    assert 0 < k < activity.numel()
    pruned = activity.argsort()[:k]
    after_bn = dict(model.named_modules())[bn_name]
    assert torch.all(after_bn.weight[pruned] == 0) and torch.all(after_bn.bias[pruned] == 0)  # after fine-tuning too
    assert torch.all(after_bn.weight[activity.argsort()[k:]] != 0)
    # The pruning stopped while D_U's accuracy was within the tolerance (10 % relative).
    assert logged["fp.unlearn_acc_pruned"] >= accuracy(victim, ctx.unlearn, ctx.device) * 0.9 - 1e-9
    assert mean_channel_activation(model, bn_name, ctx.unlearn, ctx.device)[pruned].abs().max() == 0


def test_fp_refuses_a_model_without_convolutions(make_context):
    from bdtool.core.errors import DefenseInputError

    ctx = make_context(n=5, bdk=False)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(DefenseInputError, match="no Conv2d"):
        defense("fp").defend(mlp, ctx)


@pytest.mark.slow
def test_fp_does_not_remove_the_digits_backdoor_at_n50(digits_victim, make_context):
    """Liu et al. (§6) remove BadNets backdoors with Fine-Pruning. Measured here (docs/baselines.md,
    "The field's defenses"): with D_U of 50 digits the pruning stops after about a third of the
    64 channels (D_U's accuracy falls) and fine-tuning leaves the backdoor (ASR 86-99 % over 3
    seeds). If this starts failing, the defense got better: update the docs."""
    _, result, logged, _, _, _ = run("fp", digits_victim, make_context, 50)
    assert 0 < logged["fp.pruned_channels"] < 64
    assert result.acc >= digits_victim.before.acc - 0.05  # it keeps the accuracy ...
    assert not clean_removal(result, digits_victim.before), f"Fine-Pruning now removes it (ASR {result.asr:.3f})"


# --------------------------------------------------------------------------- Neural Cleanse


def test_nc_mad_outlier_test_by_hand():
    from bdtool.defenses.nc import mad_outliers

    norms = [2.0, 10.0, 9.0, 11.0, 10.0, 12.0, 8.0, 10.0, 30.0, 10.0]
    detection = mad_outliers(norms)
    # median 10; |l − 10| = 8, 0, 1, 1, 0, 2, 2, 0, 20, 0 → median 1 → MAD 1.4826
    assert detection.anomaly_index[0] == pytest.approx(8 / 1.4826)
    assert detection.anomaly_index[8] == pytest.approx(20 / 1.4826)
    assert detection.flagged == [0] and detection.detected == 0  # class 8 is an outlier above the median: never flagged
    assert mad_outliers([5.0, 5.5, 6.0, 5.2]).detected is None
    assert mad_outliers([5.0] * 10).detected is None


def test_nc_without_a_flagged_class_returns_the_model_unchanged(digits_victim, make_context):
    model, _, logged, _, _, _ = run("nc", digits_victim, make_context, 5, reverse_epochs="3", anomaly_threshold="1e9")
    assert logged["nc.detected_class"] == -1
    for key, value in digits_victim.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.slow
def test_nc_detects_the_target_and_removes_the_digits_backdoor_at_n50(digits_victim, make_context):
    """Wang et al. (§V-VI) detect BadNets' target by the MAD anomaly index and unlearn it."""
    _, result, logged, steps, _, _ = run("nc", digits_victim, make_context, 50)
    target = digits_victim.attack.target_class
    assert logged["nc.detected_class"] == target
    assert logged["nc.anomaly_index"] > 2
    assert min(steps["nc.mask_l1"], key=steps["nc.mask_l1"].get) == target
    assert result.asr < 0.1
    assert result.acc >= digits_victim.before.acc - 0.05


# --------------------------------------------------------------------------- ANP


def test_anp_prunes_exactly_the_bn_scales_it_reports(digits_victim, make_context):
    from bdtool.defenses._pruning import affine_batchnorms

    model, _, logged, steps, _, _ = run("anp", digits_victim, make_context, 50, iterations="100")
    victim_bns = dict(affine_batchnorms(digits_victim.model))
    zeroed = 0
    for name, bn in affine_batchnorms(model):
        old = victim_bns[name]
        off = bn.weight == 0
        zeroed += int(off.sum())
        assert torch.equal(bn.weight[~off], old.weight[~off])  # kept neurons are untouched
        assert torch.equal(bn.bias, old.bias)  # ANP's code zeroes the scale only
        assert torch.equal(bn.running_mean, old.running_mean) and torch.equal(bn.running_var, old.running_var)
    assert zeroed == logged["anp.pruned_neurons"]
    # The adversarial neuron perturbation raises the loss over the unperturbed one.
    last = max(steps["anp.robust_loss"])
    assert steps["anp.robust_loss"][last] > steps["anp.natural_loss"][last]


def test_anp_threshold_zero_prunes_nothing(digits_victim, make_context):
    model, _, logged, _, _, _ = run("anp", digits_victim, make_context, 5, iterations="20", threshold="0")
    assert logged["anp.pruned_neurons"] == 0
    for key, value in digits_victim.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.slow
def test_anp_does_not_remove_the_digits_backdoor_at_n50(digits_victim, make_context):
    """Wu & Wang (§4) bring BadNets' ASR near 0 with ANP's defaults on 500 clean CIFAR-10 images.
    Measured here (docs/baselines.md): 2000 iterations on 50 digits prune 17-24 % of the BN
    neurons and leave ASR 62-95 % (3 seeds), accuracy kept. If this starts failing, update the
    docs."""
    _, result, logged, _, _, _ = run("anp", digits_victim, make_context, 50)
    assert logged["anp.pruned_neurons"] > 0
    assert result.acc >= digits_victim.before.acc - 0.05
    assert not clean_removal(result, digits_victim.before), f"ANP now removes it (ASR {result.asr:.3f})"


# --------------------------------------------------------------------------- I-BAU


def test_ibau_hypergradient_is_the_fixed_point_formula():
    """The hypergradient set on each parameter is ∂L_o/∂θ + (∂Φ/∂θ)ᵀ v with v the K-step
    fixed-point iterate v_K = Σ_{k<K} (Jᵀ)^k ∂L_o/∂δ, J = ∂Φ/∂δ (I-BAU's Algorithm 1 with the
    hypertorch fixed-point method), here checked against J built explicitly on a linear model."""
    from bdtool.defenses.ibau import IBAU

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    delta = torch.randn(1, 1, 2, 2) * 0.1
    ibau = IBAU(IBAU.make_params({"portion": "0.5"}))
    params = list(model.parameters())

    def inner(d):
        return -nn.functional.cross_entropy(model(x + d), y) + ibau.params.reg * d.pow(2).sum()

    ibau.hypergradient(model, params, delta, x, y, inner, torch.Generator().manual_seed(3))
    got = [p.grad.clone() for p in params]

    # The same patched images (the generator replayed); J by autograd; v by the series.
    chosen = torch.randperm(6, generator=torch.Generator().manual_seed(3))[:3]
    patch = torch.zeros_like(x)
    patch[chosen] = 1.0
    d = delta.clone().requires_grad_(True)
    g_d, *g_p = torch.autograd.grad(nn.functional.cross_entropy(model(x + patch * d), y), [d, *params])

    def phi(dd):
        return dd - ibau.params.inner_lr * torch.autograd.grad(inner(dd), [dd], create_graph=True)[0]

    jac = torch.autograd.functional.jacobian(lambda flat: phi(flat.view_as(d)).flatten(), d.detach().flatten())
    v = torch.zeros(4)
    for _ in range(ibau.params.K):
        v = jac.T @ v + g_d.flatten()
    dd = d.detach().clone().requires_grad_(True)
    implicit = torch.autograd.grad(phi(dd), params, grad_outputs=v.view_as(d))
    for mine, gp, imp in zip(got, g_p, implicit):
        assert torch.allclose(mine, gp + imp, atol=1e-6), (mine, gp + imp)
    assert any(imp.abs().max() > 1e-6 for imp in implicit)  # the implicit term is there


@pytest.mark.slow
def test_ibau_does_not_remove_the_digits_backdoor_cleanly_at_n50(digits_victim, make_context):
    """Zeng et al. (§5) remove BadNets with I-BAU's defaults on held-out clean data (many batches
    per round). With 50 samples the same defaults take 5 outer steps: over 3
    seeds the backdoor stays (ASR 100 %) or goes with the accuracy (ACC 68-85 %, CTCA 33-44 %;
    docs/baselines.md). No seed gives a clean removal; if one does, update the docs."""
    for seed in range(3):
        _, result, _, steps, _, _ = run("ibau", digits_victim, make_context, 50, seed=seed)
        assert len(steps["ibau.outer_loss"]) == 5
        assert not clean_removal(result, digits_victim.before), f"seed {seed}: I-BAU now removes it cleanly"
