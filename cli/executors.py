"""``--executor``: the executor a comparison runs its tasks with (docs/scale-out.md)."""

from __future__ import annotations

from typing import Any


def make_executor(executor: str, ray_address: str | None, gpus_per_task: float, cpus_per_task: float) -> Any:
    """The executor of ``--executor``; Ray options without ``--executor ray`` are refused (they
    would be silently ignored)."""
    import click

    from bdtool.core.experiment.executor import LocalExecutor

    if executor == "local":
        if ray_address is not None or gpus_per_task != 1.0 or cpus_per_task != 1.0:
            raise click.UsageError("--ray-address, --gpus-per-task and --cpus-per-task need --executor ray")
        return LocalExecutor()
    from bdtool.core.experiment.ray_executor import RayExecutor
    from bdtool.plugins.registries import get_registries

    return RayExecutor(get_registries, address=ray_address, gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task)
