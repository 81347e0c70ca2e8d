import torch

import pytest

from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.splits import draw_stratified, split_test


def test_split_protocol_has_no_overlap_and_is_stratified(digits_victim):
    data = digits_victim.data
    bundle = digits_victim.bundle
    split = split_test(bundle.test.y)
    pool, evaluation = set(split.pool_indices.tolist()), set(split.eval_indices.tolist())
    assert not pool & evaluation
    assert pool | evaluation == set(range(len(bundle.test)))
    # Stratified halves: each class's count differs by at most one between the halves.
    for c in range(10):
        a = int((bundle.test.y[split.pool_indices] == c).sum())
        b = int((bundle.test.y[split.eval_indices] == c).sum())
        assert abs(a - b) <= 1
    # No image of the pool or the evaluation half is in the training set.
    train_rows = {tuple(row.tolist()) for row in bundle.train.x.flatten(1)}
    assert not any(tuple(row.tolist()) in train_rows for row in data.pool.x.flatten(1))
    assert not any(tuple(row.tolist()) in train_rows for row in data.evaluation.x.flatten(1))


def test_poisoning_rate_target_and_recorded_indices(digits_victim):
    data = digits_victim.data
    bundle = digits_victim.bundle
    idx = data.poisoned_indices
    assert len(idx) == round(0.05 * len(bundle.train))
    assert (bundle.train.y[idx] != 0).all()  # chosen among non-target samples
    assert (data.train.y[idx] == 0).all()  # relabelled to the target
    assert torch.equal(data.train.x[idx], digits_victim.attack.apply(bundle.train.x[idx]))
    clean = data.clean_train()
    assert len(clean) == len(bundle.train) - len(idx)


def test_unlearn_draw_is_stratified_seeded_and_from_the_pool(digits_victim):
    pool = digits_victim.data.pool
    a = draw_stratified(pool.y, 50, seed=1)
    assert torch.equal(a, draw_stratified(pool.y, 50, seed=1))
    assert not torch.equal(a, draw_stratified(pool.y, 50, seed=2))
    counts = torch.bincount(pool.y[a], minlength=10)
    assert counts.min() >= 4 and counts.max() <= 6
    five = draw_stratified(pool.y, 5, seed=0)
    assert len(set(pool.y[five].tolist())) == 5  # n < classes: distinct classes
    only = draw_stratified(pool.y, 5, seed=0, only_class=3)
    assert (pool.y[only] == 3).all()


def test_n_larger_than_pool_is_a_clear_error(digits_victim):
    pool = digits_victim.data.pool
    with pytest.raises(BdtoolError, match="unseen pool has only"):
        draw_stratified(pool.y, len(pool) + 1, seed=0)
    with pytest.raises(BdtoolError, match="must be positive"):
        draw_stratified(pool.y, 0, seed=0)


def test_unlearn_drawer_restricted_to_a_class_uses_what_the_pool_has(digits_victim):
    data = digits_victim.data
    available = int((data.pool.y == 0).sum())
    draw = data.unlearn_drawer(n=available + 20, seed=0)
    only_target = draw(0)
    assert len(only_target) == available and (only_target.y == 0).all()
    assert len(data.unlearn_drawer(n=5, seed=0)(0)) == 5
    with pytest.raises(BdtoolError, match="unseen pool has only"):
        # without a class restriction, n larger than the pool stays an error
        data.unlearn_drawer(n=len(data.pool) + 1, seed=0)(None)
