"""Test helpers for plugin authors (docs/plugins.md, "Test it"): a real poisoned victim in
seconds, a context built exactly as ``bdtool compare`` builds it, and the evaluation it reports.

    from bdtool.testing import tiny_victim, make_context, evaluate_defense

    victim = tiny_victim(tmp_path)                       # digits, small CNN, BadNets, target 0
    ctx = make_context(victim, MyDefense, n=5, knowledge="none")
    model = MyDefense().defend(victim.model, ctx)
    result = evaluate_defense(MyDefense(), victim, n=5)  # EvalResult: acc, asr, ctca, ...

With pytest, ``pytest_plugins = ["bdtool.testing"]`` in a ``conftest.py`` adds the fixtures
``bdtool_victim`` (one victim per test session, in a temporary MLflow store) and
``bdtool_context`` (``bdtool_context(MyDefense, n=5, knowledge="trigger")``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from bdtool.core.experiment.context import defense_context
from bdtool.core.experiment.evaluation import evaluate
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.victim import get_victim
from bdtool.core.experiment.victim_spec import Victim, VictimSpec
from bdtool.core.interfaces import Defense, DefenseContext, Knowledge
from bdtool.core.results import EvalResult

__all__ = ["tiny_victim", "make_context", "evaluate_defense", "bdtool_victim", "bdtool_context"]


def tiny_victim(store: str | Path, *, target: int = 0, attack: str = "badnets", seed: int = 0) -> Victim:
    """The default victim (scikit-learn's bundled digits, small CNN, ``attack``, ``target``),
    trained once into an MLflow SQLite store in the folder ``store`` (a few seconds on a CPU) and
    reused from there afterwards."""
    from bdtool.plugins import get_registries  # the installed plugins, like the CLI

    folder = Path(store).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    env = RunEnv(registries=get_registries(), device=torch.device("cpu"),
                 tracking_uri=f"sqlite:///{folder / 'mlflow.db'}", experiment="bdtool-testing")
    return get_victim(VictimSpec(target=target, attack=attack, seed=seed), env)


def make_context(victim: Victim, defense_cls: type[Defense] = Defense, *, n: int = 5, seed: int = 0,
                 knowledge: str | Knowledge = "trigger", device: str | torch.device = "cpu",
                 log_metric: Callable[[str, float, int | None], None] | None = None) -> DefenseContext:
    """The context ``bdtool compare`` gives ``defense_cls`` for one (n, seed) under ``knowledge``
    (``trigger``, ``target`` or ``none``): D_U from the unseen pool, the class drawer, and only
    what the knowledge allows. ``log_metric`` receives what the defense logs (default: dropped)."""
    level = knowledge if isinstance(knowledge, Knowledge) else Knowledge.parse(knowledge)
    extra: dict[str, Any] = {"log_metric": log_metric} if log_metric is not None else {}
    return defense_context(victim, defense_cls, n, seed, torch.device(device), trigger=level is Knowledge.TRIGGER,
                           target=level is not Knowledge.NONE, **extra)


def evaluate_defense(defense: Defense, victim: Victim, *, n: int = 5, seed: int = 0,
                     knowledge: str | Knowledge = "trigger") -> EvalResult:
    """Run ``defense`` on a copy of the victim and evaluate it on the evaluation half, as a
    comparison row would (ACC, ASR, CTCA, per-class accuracy)."""
    ctx = make_context(victim, type(defense), n=n, seed=seed, knowledge=knowledge)
    torch.manual_seed(seed)
    model = defense.defend(victim.model, ctx)
    return evaluate(model, victim.data.evaluation, victim.attack, victim.data.num_classes, ctx.device)


try:  # the pytest fixtures, when pytest is there (``pytest_plugins = ["bdtool.testing"]``)
    import pytest
except ImportError:  # pragma: no cover - pytest is optional
    pass
else:
    @pytest.fixture(scope="session")
    def bdtool_victim(tmp_path_factory: pytest.TempPathFactory) -> Victim:
        """One digits victim for the test session, in a temporary MLflow store."""
        return tiny_victim(tmp_path_factory.mktemp("bdtool-store"))

    @pytest.fixture
    def bdtool_context(bdtool_victim: Victim) -> Callable[..., DefenseContext]:
        """``bdtool_context(MyDefense, n=5, seed=0, knowledge="trigger")``."""

        def make(defense_cls: type[Defense] = Defense, **kwargs: Any) -> DefenseContext:
            return make_context(bdtool_victim, defense_cls, **kwargs)

        return make
