"""Executors: what runs a comparison's tasks (docs/scale-out.md).

A comparison is a list of ``RunTask`` (one per row, n and seed) plus the victim they share. An
executor gets the victim (trained once per configuration, or reused from the store) and runs every
task with ``tasks.run_task``, returning one ``RunOutcome`` per task in the tasks' order. The
``LocalExecutor`` runs them one after another in this process; ``bdtool.core.experiment.ray_executor``
runs each as a Ray task. Both call the same ``run_task`` with the same seeds, so they give the
same numbers; the runner does everything else (the parent run, resume, the summary) the same way
for both.
"""

from __future__ import annotations

from typing import Protocol

from bdtool.core.data import DataBundle
from bdtool.core.experiment.tasks import RunOutcome, RunTask, TaskJob, run_task
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.victim import get_victim
from bdtool.core.experiment.victim_spec import Victim, VictimSpec


class Executor(Protocol):
    name: str

    def get_victim(self, spec: VictimSpec, env: RunEnv, bundle: DataBundle) -> Victim:
        """The victim of ``spec``: from the store's cache, or trained (once)."""

    def run(self, tasks: list[RunTask], victim: Victim, env: RunEnv, job: TaskJob,
            done_before: int = 0, total: int | None = None) -> list[RunOutcome]:
        """Run ``tasks`` and return their outcomes in the same order; ``done_before`` runs of the
        comparison's ``total`` were already finished (a resumed comparison), for progress."""

    def close(self) -> None:
        """Release what the executor started (a local Ray instance)."""


class LocalExecutor:
    """Every task in this process, one after another (the default)."""

    name = "local"

    def get_victim(self, spec: VictimSpec, env: RunEnv, bundle: DataBundle) -> Victim:
        return get_victim(spec, env, bundle=bundle)

    def run(self, tasks: list[RunTask], victim: Victim, env: RunEnv, job: TaskJob,
            done_before: int = 0, total: int | None = None) -> list[RunOutcome]:
        total = done_before + len(tasks) if total is None else total
        outcomes = []
        log = True  # once the store fails, the rest runs without it (tasks.run_task): no result is lost
        for i, task in enumerate(tasks):
            env.progress(f"compare ({task.row.label}, n={task.n}, seed={task.seed})", done_before + i, total)
            outcome = run_task(task, victim, env, job, log=log)
            if outcome.store_error and log:
                log = False
                env.progress.message(f"  the tracking store failed ({outcome.store_error}); the comparison goes on "
                                     "without logging")
            outcomes.append(outcome)
        env.progress("compare", total, total)
        return outcomes

    def close(self) -> None:
        pass
