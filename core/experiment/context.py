"""The one place a :class:`DefenseContext` is built: the runner, the tests and the benchmarks all
call :func:`defense_context`, so every defense sees the same D_U, the same class-restricted
drawer and only what its row's knowledge allows (docs/architecture.md, "One comparison").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from bdtool.core.callbacks import DetectionFn, _no_detection
from bdtool.core.interfaces import (
    Defense,
    DefenseContext,
    MetricLogFn,
    ProgressFn,
    _no_metric,
    _no_progress,
)

if TYPE_CHECKING:
    from bdtool.core.compute.training import TrainConfig
    from bdtool.core.experiment.splits import ExperimentData
    from bdtool.core.experiment.victim_spec import Victim
    from bdtool.core.interfaces import Attack


def defense_context(
    victim: "Victim",
    defense_cls: type[Defense],
    n: int,
    seed: int,
    device: torch.device,
    *,
    trigger: bool,
    target: bool = True,
    progress: ProgressFn = _no_progress,
    log_metric: MetricLogFn = _no_metric,
    report_detection: DetectionFn = _no_detection,
) -> DefenseContext:
    """The context of one (row, n, seed) run on ``victim``.

    - D_U: n stratified samples of the unseen pool for ``seed`` (the same for every row), plus a
      drawer of n samples of one class from the same pool. A defense that trains on the training
      set (``needs_training_set``, i.e. retraining) gets the clean training set and its recipe
      and an empty D_U instead (its row's n is the training-set size).
    - ``trigger``: the attack (trigger and target) is handed over; ``target``: the target label.
      An all-to-all backdoor has no single target label: ``target_class`` stays None (its rows are
      checked in ``rows.parse_row``).
    """
    return data_context(victim.data, defense_cls, n, seed, device,
                        attack=victim.attack if trigger else None,
                        target_class=victim.attack.target_class if (target or trigger) and not victim.attack.all_to_all
                        else None,
                        train_recipe=victim.train_config, progress=progress, log_metric=log_metric,
                        report_detection=report_detection)


def data_context(
    data: "ExperimentData",
    defense_cls: type[Defense],
    n: int,
    seed: int,
    device: torch.device,
    *,
    attack: "Attack | None",
    target_class: int | None,
    train_recipe: "TrainConfig | None" = None,
    progress: ProgressFn = _no_progress,
    log_metric: MetricLogFn = _no_metric,
    report_detection: DetectionFn = _no_detection,
) -> DefenseContext:
    """The same context on any ``ExperimentData``: a comparison's (``defense_context``) or the
    user's folder in ``bdtool defend`` (its D_U pool is the folder's training part), with the
    ``attack`` and ``target_class`` the defender knows (None = not known)."""
    retrains = defense_cls.needs_training_set
    return DefenseContext(
        unlearn=data.pool.subset([]) if retrains else data.draw_unlearn(n, seed),
        num_classes=data.num_classes,
        device=device,
        seed=seed,
        attack=attack,
        target_class=target_class if target_class is not None else (
            attack.target_class if attack is not None and not attack.all_to_all else None),
        draw_unlearn=None if retrains else data.unlearn_drawer(n, seed),
        train=data.clean_train() if retrains else None,
        train_recipe=train_recipe if retrains else None,
        progress=progress,
        log_metric=log_metric,
        report_detection=report_detection,
    )
