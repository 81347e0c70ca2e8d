"""Shared fixtures: a real digits victim in a real temporary MLflow (sqlite) store."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("mlruns") / "mlflow.db"
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def run_env(mlflow_store: str):
    from bdtool.core.victim import RunEnv

    return RunEnv(device=torch.device("cpu"), tracking_uri=mlflow_store, experiment="tests")


@pytest.fixture(scope="session")
def digits_victim(run_env):
    """The default victim (digits, small CNN, BadNets, target 0): trains in a few seconds."""
    from bdtool.core.victim import VictimSpec, get_victim

    return get_victim(VictimSpec(), run_env)


@pytest.fixture
def make_context(digits_victim):
    """Build a DefenseContext on the digits victim: make_context(n=5, bdk=True, seed=0)."""
    from bdtool.core.interfaces import DefenseContext

    def make(n: int = 5, bdk: bool = True, seed: int = 0, with_train: bool = False) -> DefenseContext:
        data = digits_victim.data
        return DefenseContext(
            unlearn=data.draw_unlearn(n, seed),
            num_classes=data.num_classes,
            device=torch.device("cpu"),
            seed=seed,
            attack=digits_victim.attack if bdk else None,
            target_class=digits_victim.attack.target_class,
            draw_unlearn=data.unlearn_drawer(n, seed),
            train=data.clean_train() if with_train else None,
            train_recipe=digits_victim.train_config if with_train else None,
        )

    return make
