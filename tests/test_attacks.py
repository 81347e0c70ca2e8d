"""Every registered attack (real entry-point discovery), on real digits images: the trigger stays in
[0, 1] and is deterministic; the training set is poisoned as the attack's paper poisons it
(dirty-label: non-target images relabelled; clean-label SIG/LC: only target-class images, labels
kept; WaNet's noise-mode images keep their labels); LC perturbs against a clean model the victim
pipeline trains and caches; digits victims learn WaNet and LC under their documented recipes
(docs/attacks.md)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.splits import poison_training_set
from bdtool.core.experiment.victim import get_victim
from bdtool.core.experiment.victim_key import config_hash
from bdtool.core.experiment.victim_spec import VictimSpec
from bdtool.core.interfaces import AttackContext
from bdtool.plugins import get_registries

ATTACKS = get_registries().attacks.names()
OPTIONS: dict[str, dict[str, str]] = {}
"""Options an attack cannot do without (``image``: the user's trigger files), set up below."""
RATE = {"training set": 0.1, "target class": 0.5}  # each attack's --poison-rate meaning


@pytest.fixture(scope="session")
def digits(run_env):
    return run_env.registries.datasets.get("digits")().load()


@pytest.fixture(scope="session")
def clean_victim(run_env):
    """The clean reference model (poison rate 0) of the default digits recipe, from the pipeline."""
    return get_victim(VictimSpec(poison_rate=0.0), run_env)


@pytest.fixture(scope="session", autouse=True)
def image_trigger_files(tmp_path_factory):
    """The ``image`` attack (a trigger the defender holds as files): a white 3×3 square in the
    bottom-right corner of a digits-sized (8×8, grey) image, and its mask."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("image-trigger")
    square = np.zeros((8, 8), dtype=np.uint8)
    square[5:, 5:] = 255
    Image.fromarray(square, mode="L").save(folder / "trigger.png")
    Image.fromarray(square, mode="L").save(folder / "mask.png")
    OPTIONS["image"] = {"trigger": str(folder / "trigger.png"), "mask": str(folder / "mask.png")}
    yield
    OPTIONS.pop("image", None)


def make_attack(name: str, target: int = 0, **options):
    cls = get_registries().attacks.get(name)
    return cls(target_class=target, params=cls.make_params({**OPTIONS.get(name, {}), **options}))


def poison(name: str, data, clean_victim, seed: int = 0, **options):
    attack = make_attack(name, **options)
    attack.prepare(data, AttackContext(num_classes=10, seed=seed, device=torch.device("cpu"),
                                       clean_model=clean_victim.fresh_copy))
    return attack, poison_training_set(data, attack, RATE[attack.poison_rate_of], seed)


def test_the_new_attacks_are_registered_through_our_entry_points():
    regs = get_registries()
    for name in ("sig", "wanet", "lc"):
        assert regs.attacks.entry(name).source == name
        assert any(p.name == name and p.distribution == "bdtool" for p in regs.plugins)
    assert {"badnets", "blend", "sig", "wanet", "lc"} <= set(ATTACKS)


@pytest.mark.parametrize("name", ATTACKS)
def test_trigger_stays_in_unit_range_changes_the_image_and_is_deterministic(name, digits):
    x = digits.test.x[:64]
    original = x.clone()
    out = make_attack(name).apply(x)
    again = make_attack(name).apply(x.clone())
    assert torch.equal(x, original)  # the input is not modified
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, again)
    assert (out - x).abs().amax(dim=(1, 2, 3)).gt(1e-3).float().mean() > 0.9  # nearly every image changes
    assert torch.equal(make_attack(name).apply(x[:5]), out[:5])  # per image, whatever the batch


@pytest.mark.parametrize("name", ATTACKS)
def test_poisoning_is_deterministic_for_a_seed(name, digits, clean_victim):
    _, a = poison(name, digits.train, clean_victim, seed=3)
    _, b = poison(name, digits.train, clean_victim, seed=3)
    _, c = poison(name, digits.train, clean_victim, seed=4)
    assert torch.equal(a.data.x, b.data.x) and torch.equal(a.data.y, b.data.y)
    assert torch.equal(a.poisoned_indices, b.poisoned_indices) and torch.equal(a.noise_indices, b.noise_indices)
    assert not torch.equal(a.poisoned_indices, c.poisoned_indices)
    assert a.data.x.min() >= 0 and a.data.x.max() <= 1


@pytest.mark.parametrize("name", ATTACKS)
def test_poisons_only_what_its_paper_poisons(name, digits, clean_victim):
    data = digits.train
    attack, out = poison(name, data, clean_victim)
    idx, noise = out.poisoned_indices, out.noise_indices
    assert len(idx) > 0
    changed = torch.nonzero((out.data.x != data.x).flatten(1).any(dim=1)).flatten()
    touched = torch.cat([idx, noise]).sort().values
    assert set(changed.tolist()) <= set(touched.tolist())  # nothing else is modified
    assert not set(idx.tolist()) & set(noise.tolist())
    if attack.poison_rate_of == "target class":  # clean-label: SIG (Barni et al.), LC (Turner et al.)
        assert (data.y[idx] == attack.target_class).all()
        assert torch.equal(out.data.y, data.y)  # every label kept
        assert len(idx) == round(RATE["target class"] * int((data.y == attack.target_class).sum()))
    else:  # dirty-label: non-target images relabelled to the target
        assert (data.y[idx] != attack.target_class).all() and (out.data.y[idx] == attack.target_class).all()
        rest = torch.ones(len(data), dtype=torch.bool)
        rest[idx] = False
        assert torch.equal(out.data.y[rest], data.y[rest])  # noise-mode images keep their labels
        assert len(idx) == round(RATE["training set"] * len(data))


def test_wanet_noise_mode_is_a_perturbed_warp_with_labels_kept(digits, clean_victim):
    attack, out = poison("wanet", digits.train, clean_victim)
    noise = out.noise_indices
    assert len(noise) == 2 * len(out.poisoned_indices)  # cross_ratio 2 (Nguyen & Tran, §5.1)
    assert torch.equal(out.data.y[noise], digits.train.y[noise])
    fixed = attack.apply(digits.train.x[noise])
    assert not torch.allclose(out.data.x[noise], fixed)  # not the trigger's exact warp ...
    assert (out.data.x[noise] - fixed).abs().mean() < (digits.train.x[noise] - fixed).abs().mean()  # ... but near it
    _, off = poison("wanet", digits.train, clean_victim, cross_ratio=0.0)
    assert len(off.noise_indices) == 0


def test_sig_is_the_papers_sinusoid(digits):
    attack = make_attack("sig", delta=0.1, frequency=2.0)
    x = torch.full((1, 1, 8, 8), 0.5)
    out = attack.apply(x)
    expected = 0.5 + 0.1 * torch.sin(2 * torch.pi * torch.arange(8) * 2.0 / 8)
    assert torch.allclose(out[0, 0], expected.expand(8, 8), atol=1e-6)  # the same on every row
    assert torch.allclose(make_attack("sig", delta=0.1, frequency=2.0, delta_test=0.3).apply(x) - 0.5, 3 * (out - 0.5), atol=1e-6)


def test_lc_perturbation_is_bounded_and_raises_the_clean_models_loss(digits, clean_victim):
    attack = make_attack("lc")
    x = digits.train.x[digits.train.y == 0][:32]
    y = torch.zeros(len(x), dtype=torch.long)
    model = clean_victim.fresh_copy().eval()
    adv = attack.perturb(model, x, y, torch.device("cpu"))
    assert (adv - x).abs().max() <= attack.params.eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        loss = lambda z: torch.nn.functional.cross_entropy(model(z), y).item()
        assert loss(adv) > 10 * loss(x)  # digits 0s are easy: at eps = 16/255 still mostly correct (docs/attacks.md)
    mask, _ = attack.mask_and_pattern(tuple(x.shape), x.device)
    stamped = attack.apply(adv)
    assert torch.equal(stamped * (1 - mask), adv * (1 - mask))  # the patch only at the four corners
    assert mask[0, 0, 0] == mask[0, 0, -1] == mask[0, -1, 0] == mask[0, -1, -1] == 1


def test_lc_refuses_to_poison_without_a_clean_model(digits):
    with pytest.raises(BdtoolError, match="clean model"):
        poison_training_set(digits.train, make_attack("lc"), 0.5, 0)


def test_victim_hash_includes_attack_params_and_rate_0_shares_one_clean_model(digits):
    spec = VictimSpec(attack="wanet", poison_rate=0.1)
    train = spec.train_config()
    h = lambda spec_, **o: config_hash(spec_, make_attack(spec_.attack, **o), train, digits)
    assert h(spec) != h(spec, s=1.0) != h(spec, cross_ratio=0.0)
    assert h(VictimSpec(attack="sig", poison_rate=0.5)) != h(VictimSpec(attack="sig", poison_rate=0.5), delta=0.2)
    clean = [h(VictimSpec(attack=a, poison_rate=0.0, target=t)) for a, t in (("wanet", 0), ("lc", 3), ("badnets", 0))]
    assert len(set(clean)) == 1


def test_lc_victim_gets_its_clean_model_from_the_pipeline_cached(run_env):
    spec = VictimSpec(attack="lc", poison_rate=0.1, epochs=2)
    first = get_victim(spec, run_env)
    assert first.clean is not None and first.clean.spec.poison_rate == 0
    assert first.clean.train_config == first.train_config  # the victim's own recipe and seed
    victim = get_victim(spec, run_env, retrain=True)
    assert victim.clean.reused and victim.clean.run_id == first.clean.run_id  # trained once, then cached
    assert victim.clean.config_hash == get_victim(VictimSpec(attack="badnets", poison_rate=0.0, epochs=2), run_env).config_hash
    assert victim.poison_seconds > 0
    assert torch.equal(victim.data.train.y, victim.bundle.train.y)  # labels kept
    params = MlflowClient(tracking_uri=run_env.tracking_uri).get_run(victim.run_id).data.params
    assert params["clean_model_run"] == first.clean.run_id and params["poison_rate_of"] == "target class"
    # a victim of a dirty-label attack never asks for a clean model
    assert get_victim(VictimSpec(attack="wanet", poison_rate=0.1, epochs=2), run_env).clean is None


# The recipes of docs/attacks.md; a victim must learn its trigger well above chance (10 classes).
LEARNED = [("wanet", ("s", "1.0"), 0.1), ("lc", ("size", "3"), 0.5)]


@pytest.mark.slow
@pytest.mark.parametrize("name,option,rate", LEARNED, ids=[n for n, _, _ in LEARNED])
def test_a_digits_victim_learns_the_trigger(name, option, rate, run_env, clean_victim):
    options = (option, ("eps", "0.1255")) if name == "lc" else (option,)
    victim = get_victim(VictimSpec(attack=name, attack_options=options, poison_rate=rate), run_env)
    assert victim.before.asr > 0.5, victim.before
    assert victim.before.acc > clean_victim.before.acc - 0.03
    # the clean model does not map the trigger to the target: the victim learned it
    assert get_victim(VictimSpec(attack=name, attack_options=options, poison_rate=0.0), run_env).before.asr < 0.2


@pytest.mark.slow
def test_defenses_that_use_the_trigger_run_on_a_new_attack(run_env, mlflow_store, monkeypatch):
    """`ours`, `ours-proj` and actFT stamp D_U with ``ctx.attack.apply``: a comparison on WaNet runs."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    result = CliRunner().invoke(main_cli(), [
        "compare", "--device", "cpu", "--experiment", "attacks-compare", "--attack", "wanet:s=1.0",
        "--poison-rate", "0.1", "--defense", "ours", "--defense", "ours-proj", "--defense", "actft",
        "--samples", "50", "--seeds", "1", "--no-log-models", "--json"])
    assert result.exit_code == 0, result.output  # 0: every run ran (3 or 1 if any failed)
    rows = json.loads(result.stdout)["rows"]
    assert len(rows) == 3 and all(r["status"] == "ok" and r["seeds_failed"] == 0 for r in rows), rows


def main_cli():
    from bdtool.cli import main

    return main
