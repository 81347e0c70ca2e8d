"""The adaptive attacks (Qi et al., ICLR 2023: adap-blend, adap-patch) and the attack aware of
ours-proj (proj-aware), on real digits images: triggers in [0, 1] at the extremes, the paper's
payload and regularization shares, the training-time trigger the paper describes (pieces of the
blend, one low-opacity patch per image) and the test-time one (the whole blend, patches at full
opacity; proj-aware's variant fixed per image)."""

from __future__ import annotations

import pytest
import torch

from bdtool.core.experiment.splits import poison_training_set
from bdtool.plugins import get_registries

NEW = ("adap-blend", "adap-patch", "proj-aware")
RATE = 0.05


@pytest.fixture(scope="module")
def digits(run_env):
    return run_env.registries.datasets.get("digits")().load()


def make(name: str, target: int = 0, **options):
    cls = get_registries().attacks.get(name)
    return cls(target_class=target, params=cls.make_params(options))


def test_registered_through_their_own_entry_points():
    regs = get_registries()
    for name in NEW:
        assert regs.attacks.entry(name).source == name
        assert any(p.name == name and p.distribution == "bdtool" for p in regs.plugins)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("fill", [0.0, 1.0, 0.5])
def test_trigger_stays_in_unit_range_at_the_extremes(name, fill, digits):
    x = torch.full((4, 1, 8, 8), fill)
    out = make(name).apply(x)
    assert out.min() >= 0 and out.max() <= 1
    poisoned = poison_training_set(digits.train, make(name), RATE, 0)
    assert poisoned.data.x.min() >= 0 and poisoned.data.x.max() <= 1


@pytest.mark.parametrize("name,cover_ratio", [("adap-blend", 1.0), ("adap-patch", 2.0), ("proj-aware", 0.0)])
def test_payload_and_regularization_shares_are_the_papers(name, cover_ratio, digits):
    data = digits.train
    out = poison_training_set(data, make(name), RATE, 0)
    payload, cover = out.poisoned_indices, out.noise_indices
    assert len(payload) == round(RATE * len(data))
    assert len(cover) == round(cover_ratio * len(payload))  # adap-blend 0.003/0.003, adap-patch 0.006/0.003
    assert not set(payload.tolist()) & set(cover.tolist())
    assert (out.data.y[payload] == 0).all() and (data.y[payload] != 0).all()
    assert torch.equal(out.data.y[cover], data.y[cover])  # regularization samples keep their labels
    if cover_ratio:
        assert (data.y[cover] != 0).any()  # of any class, not only the target
        changed = (out.data.x != data.x).flatten(1).any(1)
        assert changed[cover].float().mean() > 0.9  # they do carry the trigger
    # a different ratio is honoured
    half = poison_training_set(data, make(name, cover_ratio=0.5), RATE, 0)
    assert len(half.noise_indices) == round(0.5 * len(payload))


def test_adap_blend_shows_half_of_the_pieces_at_training_and_all_at_test(digits):
    attack = make("adap-blend")
    data = digits.train
    out = poison_training_set(data, attack, RATE, 0)
    idx = torch.cat([out.poisoned_indices, out.noise_indices])
    pattern = attack.pattern((1, 8, 8), torch.device("cpu"))
    tiles = attack.piece_map(8, 8, torch.device("cpu"))
    assert tiles.unique().numel() == 16 and (tiles == 5).sum() == 4  # 4x4 tiles of 2x2 px
    masks = set()
    for i in idx.tolist():
        x, stamped = data.x[i, 0], out.data.x[i, 0]
        full = x + 0.15 * (pattern[0] - x)  # alpha 0.15 at training
        shown = [t for t in range(16) if torch.allclose(stamped[tiles == t], full[tiles == t], atol=1e-6)]
        hidden = [t for t in range(16) if torch.equal(stamped[tiles == t], x[tiles == t])]
        assert len(shown) >= 8 and len(hidden) >= 8  # a tile equal on both sides counts twice
        masks.add(tuple(t in shown for t in range(16)))
    assert len(masks) > len(idx) // 2  # a different random half per image
    x = data.x[:10]
    assert torch.allclose(attack.apply(x), x + 0.2 * (pattern - x), atol=1e-6)  # whole pattern, 0.2 at test


def test_adap_patch_one_low_opacity_patch_per_image_and_two_at_full_opacity_at_test(digits):
    attack = make("adap-patch")
    data = digits.train
    out = poison_training_set(data, attack, RATE, 0)
    patches = attack.patches((1, 8, 8), torch.device("cpu"))
    alphas = (0.5, 0.2, 0.5, 0.3)
    counts = [0, 0, 0, 0]
    for i in torch.cat([out.poisoned_indices, out.noise_indices]).tolist():
        x, stamped = data.x[i], out.data.x[i]
        diff = (stamped - x).abs() > 1e-7
        carriers = [j for j, (mask, _) in enumerate(patches) if diff[mask.bool()].any()]
        assert len(carriers) == 1 and not diff[~patches[carriers[0]][0].bool()].any()  # one patch, nothing else
        j = carriers[0]
        mask, pattern = patches[j]
        assert torch.allclose(stamped, x + alphas[j] * mask * (pattern - x), atol=1e-6)
        counts[j] += 1
    assert max(counts) - min(counts) <= 2  # an equal share each (payload and cover split apart)
    x = data.x[:10]
    stamped = attack.apply(x)
    for j, (mask, pattern) in enumerate(patches):
        inside = mask.bool().expand_as(x)
        if j in (0, 2):
            assert torch.equal(stamped[inside], pattern.expand_as(x)[inside])  # opacity 1
        else:
            assert torch.equal(stamped[inside], x[inside])
    with pytest.raises(Exception, match="test_patches"):
        make("adap-patch", test_patches="4")


def test_proj_aware_spreads_its_variants_at_training_and_at_test(digits):
    attack = make("proj-aware")
    masks, _ = attack.variant_stack((1, 8, 8), torch.device("cpu"))
    assert len({tuple(m.flatten().nonzero().flatten().tolist()) for m in masks}) == 16  # distinct places
    data = digits.train
    out = poison_training_set(data, attack, 0.1, 0)
    used = []
    for i in out.poisoned_indices.tolist():
        diff = ((out.data.x[i] - data.x[i]).abs() > 0).flatten()
        inside = [v for v in range(16) if (diff & ~masks[v].flatten().bool()).sum() == 0 and diff.any()]
        assert inside, "a poisoned image changed outside every variant's square"
        used.append(inside[0])
    assert len(set(used)) >= 12
    x = digits.test.x[:200]
    which = attack.test_variants(x)
    assert len(set(which.tolist())) >= 14  # the test-time trigger is spread too
    assert torch.equal(attack.test_variants(x[50:60]), which[50:60])  # fixed per image, whatever the batch
    assert torch.equal(attack.apply(x[:3]), attack.stamp(x[:3], which[:3]))
