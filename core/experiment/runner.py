"""The comparison runner behind ``bdtool compare`` (docs/architecture.md, "One comparison").

One parent MLflow run per comparison; a nested run per (row, n, seed). Every row runs on a fresh
copy of the victim with the same D_U for a given (n, seed). A row that raises is marked FAILED
(its error as a tag) and the comparison goes on; the parent ends FINISHED only when every run
ran, FAILED otherwise ("2 of 6 runs failed: ..." as its error tag; its summary is logged either
way). Ctrl-C or a signal marks the open runs KILLED and re-raises. The runs themselves are
``tasks.run_task``, run by an executor (core/experiment/executor.py: here, or on Ray); a resumed
comparison (core/experiment/resume.py) runs only the tasks it does not have FINISHED.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from bdtool.core import interrupts, tracking
from bdtool.core.data import DataBundle
from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.compare_config import CompareConfig
from bdtool.core.experiment.components import load_dataset
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.evaluation import selected_metrics
from bdtool.core.experiment.executor import Executor, LocalExecutor
from bdtool.core.experiment.output import log_summary_artifacts, publish
from bdtool.core.experiment.report import (Summary, aggregate, format_markdown, row_sizes, summary_metrics,
                                          summary_table, write_report)
from bdtool.core.experiment.resume import AUTO, comparison_key, find_resume_point, split_tasks
from bdtool.core.experiment.splits import split_test
from bdtool.core.experiment.tasks import RunOutcome, RunTask, TaskJob, finite_or_none, namespaced
from bdtool.core.experiment.victim_spec import Victim
from bdtool.core.tracking.failures import is_store_error, store_error_line
from bdtool.core.tracking.inputs import dataset_input
from bdtool.core.tracking.runs import set_description
from bdtool.core.tracking.serialization import file_sha256

__all__ = ["CompareConfig", "ComparisonPlan", "ComparisonResult", "check_comparison", "RunOutcome", "comparison_tasks", "failed_outcomes",
           "failure_details", "failure_reason", "finite_or_none", "namespaced", "run_comparison", "validate_samples"]


CONFIG_ARTIFACT = "config.toml"
"""The comparison as TOML (``bdtool compare --config``), logged with its run."""
TABLE_ARTIFACT = "comparison_table.json"
"""The comparison's table as an MLflow table artifact (``mlflow.log_table``) of its run."""


@dataclass
class ComparisonResult:
    victim: Victim
    config: CompareConfig
    outcomes: list[RunOutcome]
    parent_run_id: str | None
    summary: Summary
    resumed: int = 0
    """Runs taken FINISHED from the resumed comparison, not run again."""
    store_error: str | None = None
    """Set when the tracking store failed during the comparison: every result was still computed,
    printed and written to ``--output``, but not all was logged (``unlogged`` runs, the summary)."""
    unlogged: int = 0
    summary_unlogged: bool = False


@dataclass
class StoreState:
    """The store's state during one comparison: once it fails, the rest runs without logging."""

    error: str | None = None
    unlogged: int = 0
    summary_unlogged: bool = False
    summary: Summary | None = None


@dataclass
class ComparisonPlan:
    """What a comparison would run, known before any work (``bdtool compare --dry-run``)."""

    bundle: DataBundle
    rows: list[str]
    samples: list[int]
    seeds: int
    pool: int
    """Images of the unseen pool D_U is drawn from."""
    runs: int
    """(row, n, seed) runs: a row that trains on the training set (retraining) has one n."""

    def to_dict(self) -> dict[str, object]:
        return {"dataset": self.bundle.name, "classes": self.bundle.num_classes, "rows": self.rows,
                "samples": self.samples, "seeds": self.seeds, "pool": self.pool, "runs": self.runs}


def check_comparison(config: CompareConfig, env: RunEnv) -> ComparisonPlan:
    """Every check a comparison can make before it trains or logs anything: seeds, rows, the data
    set, ``--samples`` against the unseen pool, and the victim's spec (``check_victim_spec``)."""
    from bdtool.core.experiment.victim import check_victim_spec

    if config.seeds < 1:
        raise BdtoolError(f"--seeds must be at least 1, got {config.seeds}")
    if not config.rows:
        raise BdtoolError("no defense rows to run; pass --defense NAME (see bdtool list defenses)")
    bundle = load_dataset(config.spec.dataset, env)
    pool = len(split_test(bundle.test.y).pool_indices)
    validate_samples(config.samples, pool)
    check_victim_spec(config.spec, env, bundle)
    runs = sum(1 if r.defense_cls.needs_training_set else len(config.samples) for r in config.rows) * config.seeds
    return ComparisonPlan(bundle=bundle, rows=[r.label for r in config.rows], samples=list(config.samples),
                          seeds=config.seeds, pool=pool, runs=runs)


def validate_samples(samples: list[int], pool_size: int) -> None:
    for n in samples:
        if n <= 0:
            raise BdtoolError(f"--samples must be positive, got {n}")
        if n > pool_size:
            raise BdtoolError(
                f"--samples {n} is larger than the unseen pool ({pool_size} images of this dataset's test split); "
                "use a smaller value"
            )


def comparison_tasks(config: CompareConfig, victim: Victim) -> list[RunTask]:
    """Every (row, n, seed) of the comparison, in the table's order."""
    tasks: list[RunTask] = []
    for row in config.rows:
        for n in row_sizes(row, config.samples, victim):
            for seed in range(config.seeds):
                tasks.append(RunTask(len(tasks), row, n, seed))
    return tasks


def run_comparison(config: CompareConfig, env: RunEnv, executor: Executor | None = None) -> ComparisonResult:
    """Validate everything, get the victim, run every (row, n, seed) with ``executor`` (default:
    here, one after another) and log it all to MLflow; with ``config.resume``, only the runs the
    resumed comparison does not have FINISHED."""
    import mlflow  # heavy: see core/tracking/store.py

    executor = executor or LocalExecutor()
    bundle = check_comparison(config, env).bundle

    victim = executor.get_victim(config.spec, env, bundle)
    uri = tracking.setup_tracking(env.tracking_uri)
    experiment_id = tracking.ensure_experiment(env.experiment, uri)
    tasks = comparison_tasks(config, victim)
    metric_classes = selected_metrics(
        [e.obj for e in sorted(env.registries.metrics, key=lambda e: (e.obj.column_order, e.name))], config.metrics)
    key = comparison_key(victim.config_hash, [r.label for r in config.rows], config.samples, config.seeds)
    point = find_resume_point(config.resume, key, experiment_id, metric_classes) if config.resume else None
    if config.resume == AUTO and point is None:
        env.progress.message("--resume auto: no earlier comparison with these options in the store; starting one")
    todo, done = split_tasks(tasks, point)
    if point is not None:
        env.progress.message(f"resuming comparison {point.parent_run_id}: {len(done)} of {len(tasks)} runs already "
                             f"finished, {len(todo)} to run")

    def record_failure(exc: BaseException) -> None:
        mlflow.set_tag(tracking.ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])

    start = {"run_id": point.parent_run_id} if point is not None else {"experiment_id": experiment_id}
    state = StoreState()
    parent = None
    outcomes: list[RunOutcome] = []
    try:
        with tracking.tracked_run(
            run_name=f"compare {config.spec.dataset}/{config.spec.model}/"
                     f"{config.spec.attack if config.spec.backdoored else 'clean'}",
            tags={tracking.KIND_TAG: "comparison", tracking.VICTIM_RUN_TAG: victim.run_id,
                  tracking.VICTIM_HASH_TAG: victim.config_hash, tracking.COMPARISON_KEY_TAG: key,
                  tracking.EXECUTOR_TAG: executor.name, **tracking.standard_tags(env.device)},
            on_error=record_failure, **start,
        ) as parent:
            if point is not None and tracking.ERROR_TAG in parent.data.tags:  # the try it resumes: no longer true
                mlflow.MlflowClient().delete_tag(parent.info.run_id, tracking.ERROR_TAG)
            tracking.log_params_flat({
                "dataset": config.spec.dataset, "model": config.spec.model, **config.spec.model_params(),
                "attack": config.spec.attack, "target": config.spec.target, "poison_rate": config.spec.poison_rate,
                "victim_kind": config.spec.victim_kind(),
                "samples": "+".join(map(str, config.samples)), "seeds": config.seeds,
                "rows": " | ".join(r.text for r in config.rows), "victim_run_id": victim.run_id,
                **{f"attack.{k}": v for k, v in victim.attack.params_dict().items()},
                **({"victim_source": config.spec.source} if config.spec.source is not None else {}),
            })
            if config.config_toml is not None:
                mlflow.log_text(config.config_toml, CONFIG_ARTIFACT)
            mlflow.log_metrics({"before_acc": victim.before.acc, "before_asr": victim.before.asr,
                                "before_ctca": victim.before.ctca, "before_min_class_acc": victim.before.min_class_acc})
            tracking.log_params_flat({"knowledge": " | ".join(f"{r.label}: {r.knowledge_label}" for r in config.rows),
                                      "metrics": "+".join(config.metrics) or "all"})
            # The evaluation half is the same for every run: its dataset input (a digest of all its
            # images) is built once and logged in each run.
            evaluation_input = dataset_input(
                victim.data.evaluation, f"{config.spec.dataset} evaluation", dataset=config.spec.dataset,
                split="test (evaluation half)", n=len(victim.data.evaluation))
            job = TaskJob(experiment_id=experiment_id, parent_run_id=parent.info.run_id,
                          metric_classes=metric_classes, log_models=config.log_models,
                          evaluation_input=evaluation_input)
            ran = executor.run(todo, victim, env, job, done_before=len(done), total=len(tasks))
            by_index = {**done, **{task.index: outcome for task, outcome in zip(todo, ran)}}
            outcomes = [by_index[task.index] for task in tasks]
            state.error = next((o.store_error for o in outcomes if o.store_error), None)
            state.unlogged = sum(not o.logged for o in outcomes)
            shown = [env.registries.metrics.get(name) for name in config.metrics] or None
            state.summary = summary = aggregate(victim, outcomes, config, metric_classes, shown)
            with tempfile.TemporaryDirectory() as tmp:
                write_report(summary, Path(tmp))
                if config.output_dir:  # first: the results are kept whatever the store does next
                    publish(tmp, config.output_dir)
                if state.error is None:
                    try:
                        mlflow.log_metrics({"runs_resumed": float(len(done)), "runs_ran": float(len(todo))})
                        log_summary_artifacts(tmp, "summary")
                        mlflow.set_tag(tracking.SUMMARY_SHA256_TAG, file_sha256(Path(tmp) / "summary.json"))
                        mlflow.log_metrics(summary_metrics(summary, metric_classes))
                        mlflow.log_table(summary_table(summary), artifact_file=TABLE_ARTIFACT)
                        set_description(format_markdown(summary))
                    except Exception as exc:
                        if not is_store_error(exc):
                            raise
                        state.error = str(exc) if isinstance(exc, BdtoolError) else store_error_line(exc)
                        state.summary_unlogged = True
            reason = "; ".join(r for r in (failure_reason(outcomes), state.error and f"not logged: {state.error}") if r)
            if reason:  # FINISHED only when every run ran and was logged; the summary is logged either way
                raise tracking.RunFailed(reason)
    except Exception as exc:
        interrupts.raise_if_pending(exc)
        if not is_store_error(exc):
            raise
        if state.summary is None:  # nothing computed yet: one line
            raise BdtoolError(f"the tracking store {uri} failed before any result ({store_error_line(exc)}); "
                              "check it (bdtool checks it before any work) and run again") from None
        state.error = state.error or store_error_line(exc)
        state.summary_unlogged = True
    return ComparisonResult(victim, config, outcomes, parent.info.run_id if parent is not None else None,
                            state.summary, resumed=len(done), store_error=state.error, unlogged=state.unlogged,
                            summary_unlogged=state.summary_unlogged)


def failed_outcomes(outcomes: list[RunOutcome]) -> list[RunOutcome]:
    return [o for o in outcomes if o.status != "FINISHED"]


def failure_details(outcomes: list[RunOutcome]) -> str:
    """The distinct errors of the failed runs: "Explode n=5 (2 runs): RuntimeError: ..."."""
    groups: dict[tuple[str, int, str], int] = {}
    for o in failed_outcomes(outcomes):
        key = (o.label, o.n, o.error or "unknown error")
        groups[key] = groups.get(key, 0) + 1
    return "; ".join(f"{label} n={n}" + (f" ({k} runs)" if k > 1 else "") + f": {error}"
                     for (label, n, error), k in groups.items())


def failure_reason(outcomes: list[RunOutcome]) -> str | None:
    """Why the comparison is FAILED ("2 of 6 runs failed: ..."), or None when every run ran."""
    failed = failed_outcomes(outcomes)
    if not failed:
        return None
    return f"{len(failed)} of {len(outcomes)} runs failed: {failure_details(outcomes)}"
