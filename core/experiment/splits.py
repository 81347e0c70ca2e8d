"""The data protocol (docs/architecture.md, "Data protocol").

- Poisoned training set: the attack's own ``Attack.poison``. Dirty-label attacks (the default):
  ``rate`` of the *whole* training set, drawn among non-target samples, is stamped with the
  trigger and relabelled to the target class; clean-label attacks (SIG, label-consistent) change
  ``rate`` of the *target class* and keep every label. The indices are kept.
- The test split is halved once (stratified, fixed seed) into the unseen pool, from which the
  unlearning set D_U is drawn, and the evaluation half, on which every metric is computed.
- D_U of n samples is drawn from the pool, stratified: each class gets ⌊n·p_c⌋ samples and the
  remainder goes to randomly chosen classes, so n=5 with 10 classes gives 5 distinct classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

from bdtool.core.errors import BdtoolError
from bdtool.core.interfaces import AttackContext, Poisoning
from bdtool.core.tensors import LabeledTensors

if TYPE_CHECKING:
    from bdtool.core.data import DataBundle
    from bdtool.core.interfaces import Attack

TEST_SPLIT_SEED = 0
"""The test split is divided once, with this seed, so every experiment evaluates on the same half."""


PoisonedSet = Poisoning
"""The poisoned training set (``Attack.poison``'s result; the old name, kept)."""


def poison_training_set(data: LabeledTensors, attack: "Attack", rate: float, seed: int) -> Poisoning:
    """The attack's own poisoning (``Attack.poison``) of ``data`` at ``rate``, drawn with a
    generator seeded with ``seed``. Dirty-label attacks (the default) stamp and relabel ``rate`` of
    the training set, chosen among non-target samples; clean-label attacks (``poison_rate_of ==
    "target class"``) change ``rate`` of the target class and keep every label."""
    gen = torch.Generator().manual_seed(seed)
    return attack.poison(data, rate, gen)


@dataclass(frozen=True)
class TestSplit:
    pool_indices: Tensor
    eval_indices: Tensor


def split_test(labels: Tensor, seed: int = TEST_SPLIT_SEED) -> TestSplit:
    """Stratified halves of the test split: (unseen pool, evaluation half)."""
    from sklearn.model_selection import train_test_split  # heavy: imported on use

    idx = np.arange(len(labels))
    y = labels.cpu().numpy()
    pool, evaluation = train_test_split(idx, test_size=0.5, stratify=y, random_state=seed)
    return TestSplit(torch.as_tensor(np.sort(pool)), torch.as_tensor(np.sort(evaluation)))


def draw_stratified(labels: Tensor, n: int, seed: int, only_class: int | None = None) -> Tensor:
    """Indices of ``n`` samples of ``labels``, stratified by class (see module docstring)."""
    if n <= 0:
        raise BdtoolError(f"the number of unlearning samples must be positive, got {n}")
    labels = labels.cpu()
    candidates = torch.arange(len(labels))
    if only_class is not None:
        candidates = candidates[labels == only_class]
        if n > len(candidates):
            raise BdtoolError(
                f"asked for {n} samples of class {only_class} but the unseen pool has only {len(candidates)}; "
                "use a smaller --samples"
            )
    if n > len(candidates):
        raise BdtoolError(
            f"asked for {n} unlearning samples but the unseen pool has only {len(candidates)}; use a smaller --samples"
        )
    rng = np.random.default_rng(seed)
    sub_labels = labels[candidates].numpy()
    classes, counts = np.unique(sub_labels, return_counts=True)
    quota = np.floor(n * counts / counts.sum()).astype(int)
    remainder = n - int(quota.sum())
    if remainder:
        spare = np.flatnonzero(counts > quota)
        extra = rng.choice(spare, size=remainder, replace=False, p=None)
        quota[extra] += 1
    chosen: list[int] = []
    for cls, q in zip(classes, quota):
        members = np.flatnonzero(sub_labels == cls)
        chosen.extend(rng.choice(members, size=int(q), replace=False).tolist())
    return candidates[torch.as_tensor(sorted(chosen), dtype=torch.long)]


@dataclass
class ExperimentData:
    """Everything one experiment needs, derived from one DataBundle and one attack."""

    train: LabeledTensors  # poisoned
    poisoned_indices: Tensor
    pool: LabeledTensors
    evaluation: LabeledTensors
    num_classes: int
    noise_indices: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    """Training samples the attack changed without the backdoor, labels kept (WaNet's noise mode)."""

    def clean_train(self) -> LabeledTensors:
        """The training set minus the poisoned samples (what retraining uses)."""
        keep = torch.ones(len(self.train), dtype=torch.bool)
        keep[self.poisoned_indices] = False
        return self.train.subset(torch.nonzero(keep).flatten())

    def draw_unlearn(self, n: int, seed: int, only_class: int | None = None) -> LabeledTensors:
        return self.pool.subset(draw_stratified(self.pool.y, n, seed, only_class))

    def unlearn_drawer(self, n: int, seed: int) -> Callable[[int | None], LabeledTensors]:
        """The ``DefenseContext.draw_unlearn`` of one (n, seed): n pool samples, or with a class
        only that class's samples -- all of them when the pool holds fewer than n (digits has 27
        per class), so a defense restricted to one class still runs; it logs how many it used."""

        def draw(only_class: int | None = None) -> LabeledTensors:
            size = n
            if only_class is not None:
                size = min(n, int((self.pool.y == only_class).sum()))
                if size == 0:
                    raise BdtoolError(f"the unseen pool holds no image of class {only_class}")
            return self.draw_unlearn(size, seed, only_class)

        return draw


def prepare_experiment(bundle: "DataBundle", attack: "Attack", rate: float, seed: int,
                       attack_context: AttackContext | None = None) -> ExperimentData:
    """Poison the training set (after ``attack.prepare(train, attack_context)`` when ``rate`` > 0
    and a context is given) and split the test set."""
    attack.num_classes = bundle.num_classes  # an all-to-all backdoor's labels need it
    if rate > 0 and attack_context is not None:
        attack.prepare(bundle.train, attack_context)
    poisoned = poison_training_set(bundle.train, attack, rate, seed)
    split = split_test(bundle.test.y)
    return ExperimentData(
        train=poisoned.data,
        poisoned_indices=poisoned.poisoned_indices,
        pool=bundle.test.subset(split.pool_indices),
        evaluation=bundle.test.subset(split.eval_indices),
        num_classes=bundle.num_classes,
        noise_indices=poisoned.noise_indices,
    )
