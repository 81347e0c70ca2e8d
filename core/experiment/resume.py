"""Resuming a comparison (docs/scale-out.md, "Resume").

Every comparison's parent run carries a *comparison key*: a digest of what decides its runs (the
victim's config hash, the rows' labels, the sample sizes and the number of seeds). ``--resume
PARENT_RUN_ID`` (or ``auto``: the newest comparison with the same key) reopens that parent run,
keeps the (row, n, seed) runs under it that ended FINISHED, rebuilt from the store without
recomputing anything, and runs only the rest; a killed comparison loses only the runs that were
in flight. Runs of the parent that ended FAILED or KILLED stay in the store as they are and are
run again.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from bdtool.core import tracking
from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.evaluation import from_mlflow_units
from bdtool.core.experiment.tasks import RunOutcome, RunTask, detection_from_metrics
from bdtool.core.results import EvalResult
from bdtool.core.tracking.tags import COMPARISON_KEY_TAG

AUTO = "auto"


def comparison_key(victim_hash: str, row_labels: list[str], samples: list[int], seeds: int) -> str:
    """Same victim, rows, sizes and seeds → same key (16 hex digits)."""
    text = json.dumps({"victim": victim_hash, "rows": row_labels, "samples": list(samples), "seeds": seeds},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ResumePoint:
    """A comparison to continue: its parent run and the outcomes already FINISHED under it."""

    parent_run_id: str
    finished: dict[tuple[str, int, int], RunOutcome] = field(default_factory=dict)


def find_resume_point(resume: str, key: str, experiment_id: str, metric_classes: list[Any]) -> ResumePoint | None:
    """The parent run named by ``resume`` (a run id, or ``auto``: the newest comparison run of
    the experiment with ``key``; None when there is none) with its FINISHED runs. A run id that is
    not a comparison of this experiment, or whose key differs, is refused with one line."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if resume == AUTO:
        found = client.search_runs([experiment_id], filter_string=f"tags.`{COMPARISON_KEY_TAG}` = '{key}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            return None
        parent = found[0]
    else:
        try:
            parent = client.get_run(resume)
        except MlflowException:
            raise BdtoolError(f"--resume {resume}: no such run in this store; pass the parent run id that "
                              "`bdtool compare` printed, or --resume auto") from None
        tags = parent.data.tags
        if tags.get(tracking.KIND_TAG) != "comparison" or parent.info.experiment_id != experiment_id:
            raise BdtoolError(f"--resume {resume}: that run is not a comparison of experiment "
                              f"'{experiment_id}'; pass a comparison's parent run id")
        if tags.get(COMPARISON_KEY_TAG) != key:
            raise BdtoolError(f"--resume {resume}: that comparison ran another victim, rows, --samples or "
                              "--seeds; resume it with the same options it was started with")
    return ResumePoint(parent.info.run_id, finished_outcomes(client, parent.info.run_id, experiment_id,
                                                             metric_classes))


def finished_outcomes(client: Any, parent_run_id: str, experiment_id: str,
                      metric_classes: list[Any]) -> dict[tuple[str, int, int], RunOutcome]:
    """The FINISHED runs under ``parent_run_id`` as outcomes, by (row label, n, seed); the newest
    one when a task has finished twice."""
    import mlflow

    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"], max_results=50000)
    outcomes: dict[tuple[str, int, int], RunOutcome] = {}
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        if tags.get(tracking.KIND_TAG) != "defense" or "n" not in params or "seed" not in params:
            continue
        try:
            result = EvalResult.from_dict(mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/evaluation.json"))
        except Exception:  # noqa: BLE001 - an unreadable evaluation: run the task again
            continue
        outcome = RunOutcome(
            label=tags.get(tracking.ROW_TAG, ""), defense=tags.get(tracking.DEFENSE_TAG, ""),
            n=int(params["n"]), seed=int(params["seed"]), knowledge=tags.get(tracking.KNOWLEDGE_TAG, ""),
            status="FINISHED", result=result,
            metrics=from_mlflow_units(metric_classes, {cls.name: metrics.get(cls.name, math.nan)
                                                       for cls in metric_classes}),
            defense_time_s=metrics.get("defense_time_s", math.nan), repair_time_s=metrics.get("repair_time_s"),
            run_id=run.info.run_id, detection=detection_from_metrics(metrics))
        outcomes[(outcome.label, outcome.n, outcome.seed)] = outcome
    return outcomes


def split_tasks(tasks: list[RunTask], point: ResumePoint | None) -> tuple[list[RunTask], dict[int, RunOutcome]]:
    """The tasks still to run, and the outcomes already there by task index."""
    if point is None:
        return list(tasks), {}
    todo, done = [], {}
    for task in tasks:
        outcome = point.finished.get(task.key)
        if outcome is None:
            todo.append(task)
        else:
            done[task.index] = outcome
    return todo, done
