"""Shared fixtures: a real digits victim in a real temporary MLflow (sqlite) store."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

from bdtool.core.interfaces import Defense  # noqa: E402 - after the thread setting


# Test doubles shared by the test files (``from conftest import Explodes``). A file that registers
# one subclasses it with a name of its own (``class Explodes(conftest.Explodes): name = "..."``),
# so that its runs and assertions stay apart from the other files'.


class Explodes(Defense):
    """A defense that always fails: ``apply`` raises ``RuntimeError(message)``."""

    name = "test-explode"
    label = "Explode"
    message = "this defense always fails"

    def apply(self, model, ctx):
        raise RuntimeError(self.message)


class Passes(Defense):
    """A defense that changes nothing: ``apply`` returns the model as it came."""

    name = "test-fine"
    label = "Fine"

    def apply(self, model, ctx):
        return model


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("mlruns") / "mlflow.db"
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def run_env(mlflow_store: str):
    from bdtool.core.experiment.env import RunEnv
    from bdtool.plugins import get_registries

    return RunEnv(registries=get_registries(), device=torch.device("cpu"), tracking_uri=mlflow_store,
                  experiment="tests")


@pytest.fixture(scope="session")
def digits_victim(run_env):
    """The default victim (digits, small CNN, BadNets, target 0): trains in a few seconds."""
    from bdtool.core.experiment.victim import get_victim
    from bdtool.core.experiment.victim_spec import VictimSpec

    return get_victim(VictimSpec(), run_env)


@pytest.fixture
def make_context(digits_victim):
    """Build a DefenseContext on the digits victim with the runner's own factory:
    make_context(n=5, bdk=True, seed=0). ``with_train`` adds the clean training set and recipe
    (what the factory gives a retraining defense) on top of D_U."""
    import dataclasses

    from bdtool.core.experiment.context import defense_context
    from bdtool.core.interfaces import Defense, DefenseContext

    def make(n: int = 5, bdk: bool = True, seed: int = 0, with_train: bool = False) -> DefenseContext:
        ctx = defense_context(digits_victim, Defense, n, seed, torch.device("cpu"), trigger=bdk)
        if with_train:
            ctx = dataclasses.replace(ctx, train=digits_victim.data.clean_train(),
                                      train_recipe=digits_victim.train_config)
        return ctx

    return make


@pytest.fixture(scope="session")
def installed_example(tmp_path_factory):
    """The example third-party package plugins/examples/bdtool-clp, pip-installed into a folder of
    its own (real entry-point metadata); prepend it to sys.path to load it."""
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "plugins" / "examples" / "bdtool-clp"
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(example)],
        check=True, capture_output=True, text=True,
    )
    assert list(target.glob("bdtool_clp-*.dist-info/entry_points.txt"))
    return target


@pytest.fixture
def register_defense():
    """register_defense(cls): put an in-test defense in the registry until the test ends."""
    from bdtool.plugins import get_registries

    registry = get_registries().defenses
    added: list[str] = []

    def register(cls):
        registry.register(cls.name, cls, source="tests")
        added.append(cls.name)

    yield register
    for name in added:
        registry.unregister(name)
