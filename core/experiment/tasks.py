"""One (row, n, seed) run of a comparison, the unit every executor runs (docs/architecture.md,
"One comparison"; docs/scale-out.md). A task is self-contained: given the victim, the row and a
``TaskJob`` (where to log, which metrics), it opens its nested MLflow run, defends a fresh copy of
the victim, evaluates, logs and returns a ``RunOutcome``. The local executor runs it in the
comparison's process; the Ray executor runs the same function in a worker process, so both give
the same numbers for the same seeds.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any

from bdtool.core import interrupts, tracking
from bdtool.core.callbacks import DetectionReport
from bdtool.core.compute.device import seed_everything, timed
from bdtool.core.experiment.context import defense_context
from bdtool.core.experiment.evaluation import (compute_metrics, evaluate, measure_model_metrics, metric_probe,
                                               to_mlflow_units)
from bdtool.core.tracking.models import logged_model_name
from bdtool.core.experiment.rows import RowSpec
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.victim_spec import Victim
from bdtool.core.interfaces import Knowledge, target_text
from bdtool.core.results import EvalResult
from bdtool.core.tracking.failures import ArtifactLogError, is_store_error, store_error_line
from bdtool.core.tracking.inputs import log_dataset_input
from bdtool.core.tracking.runs import set_description


@dataclass(frozen=True)
class RunTask:
    """One (row, n, seed) of a comparison; ``index`` is its place in the table's order."""

    index: int
    row: RowSpec
    n: int
    seed: int

    @property
    def key(self) -> tuple[str, int, int]:
        """What identifies the task in the store (``ROW_TAG``, params ``n`` and ``seed``): how a
        resumed comparison finds the runs it already has."""
        return (self.row.label, self.n, self.seed)


@dataclass
class TaskJob:
    """What every task of one comparison shares: where its runs go and what they compute."""

    experiment_id: str
    parent_run_id: str
    metric_classes: list[Any]
    """Every registered metric (Metric classes), computed and logged in each run."""
    log_models: bool = True
    evaluation_input: Any = None
    """The evaluation half as an MLflow dataset input (built once per comparison)."""


@dataclass
class RunOutcome:
    """One (row, n, seed) result. ``result`` is None when the row failed."""

    label: str
    defense: str
    n: int
    seed: int
    knowledge: str
    """trigger | target | none | oracle: what the row knew."""
    status: str  # FINISHED | FAILED
    result: EvalResult | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    """Every registered metric of this run (NaN where a metric could not be computed)."""
    defense_time_s: float = float("nan")
    repair_time_s: float | None = None
    run_id: str | None = None
    error: str | None = None
    store_error: str | None = None
    """The tracking store's error when the store failed during this run (the run's result is kept,
    or the run was done again without the store)."""
    logged: bool = True
    """False when this run could not be (fully) logged: the store had failed."""
    detection: dict[str, Any] | None = None
    """The defense's verdict (``ctx.report_detection``): detected, target, score, threshold; None
    when the defense reports none."""

    @property
    def score(self) -> float:
        return self.metrics.get("score", float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "defense": self.defense, "n": self.n, "seed": self.seed,
            "knowledge": self.knowledge, "status": self.status,
            "metrics": {k: finite_or_none(v) for k, v in self.metrics.items()},
            "defense_time_s": finite_or_none(self.defense_time_s), "repair_time_s": finite_or_none(self.repair_time_s),
            "run_id": self.run_id, "error": self.error, "eval": self.result.to_dict() if self.result else None,
            "detection": self.detection,
        }


def detection_dict(report: DetectionReport) -> dict[str, Any]:
    return {"detected": bool(report.detected), "target": report.target, "score": finite_or_none(float(report.score)),
            "threshold": finite_or_none(float(report.threshold))}


def detection_metrics(detection: dict[str, Any]) -> dict[str, float]:
    """A verdict as the run's MLflow metrics (searchable: ``metrics.detected = 1``); detected_class is
    -1 when nothing was flagged, suspected_class the class it would have pointed at."""
    out = {"detected": float(detection["detected"]),
           "detected_class": float(detection["target"]) if detection["detected"] and detection["target"] is not None else -1.0,
           "suspected_class": float(detection["target"]) if detection["target"] is not None else -1.0}
    for key in ("score", "threshold"):
        if detection.get(key) is not None:
            out[f"detection_{key}"] = float(detection[key])
    return out


def detection_from_metrics(metrics: dict[str, float]) -> dict[str, Any] | None:
    """The inverse of ``detection_metrics`` (a resumed run's verdict), None when it logged none."""
    if "detected" not in metrics:
        return None
    suspect = metrics.get("suspected_class", -1.0)
    return {"detected": bool(metrics["detected"]), "target": None if suspect < 0 else int(suspect),
            "score": metrics.get("detection_score"), "threshold": metrics.get("detection_threshold")}


def namespaced(defense_name: str, key: str) -> str:
    """A defense's own metric key under its name ("nad.ce_loss"), so it can never collide with
    bdtool's metrics (acc, asr, score, ...) or another defense's (docs/plugins.md)."""
    prefix = f"{defense_name}."
    return key if key.startswith(prefix) else prefix + key


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a missing number is null."""
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def run_task(task: RunTask, victim: Victim, env: RunEnv, job: TaskJob, log: bool = True) -> RunOutcome:
    """Run ``task`` in its own MLflow run under ``job.parent_run_id``: FINISHED with its metrics,
    or FAILED with its error (a failed defense does not sink the comparison). A stop (Ctrl-C, a
    signal) ends the run KILLED and propagates.

    When the tracking store fails during the run (``is_store_error``), the outcome
    keeps its result if the defense had already been evaluated, or the task is done again without
    the store (``log=False``, as the local executor runs every later task), and
    ``outcome.store_error`` says why: a store failing mid-comparison loses no result."""
    import mlflow  # heavy: see core/tracking/store.py

    row, n, seed = task.row, task.n, task.seed
    outcome = RunOutcome(label=row.label, defense=row.defense_name, n=n, seed=seed, knowledge=row.knowledge_label,
                         status="RUNNING")
    if not log:
        outcome.logged = False
        try:
            _defend_and_evaluate(row, n, seed, victim, env, job, outcome, log=False)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed defense must not sink the comparison
            interrupts.raise_if_pending(exc)
            outcome.status, outcome.error, outcome.result = "FAILED", f"{type(exc).__name__}: {exc}", None
            env.progress.message(f"  {row.label} n={n} seed={seed} failed: {outcome.error}")
            return outcome
        outcome.status = "FINISHED"
        return outcome

    def record_failure(exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        outcome.status, outcome.error = "FAILED", message
        if not is_store_error(exc):
            outcome.result = None
        mlflow.set_tag(tracking.ERROR_TAG, message[:5000])
        mlflow.log_text(traceback.format_exc(), "error.txt")

    try:
        with tracking.tracked_run(
            experiment_id=job.experiment_id, parent_run_id=job.parent_run_id,
            nested=_parent_is_active(job.parent_run_id), run_name=f"{row.label} n={n} seed={seed}",
            tags={tracking.KIND_TAG: "defense", tracking.ROW_TAG: row.label, tracking.KNOWLEDGE_TAG: row.knowledge_label,
                  tracking.DEFENSE_TAG: row.defense_name,
                  tracking.VICTIM_RUN_TAG: victim.run_id, tracking.VICTIM_HASH_TAG: victim.config_hash,
                  **tracking.standard_tags(env.device)},
            on_error=record_failure,
        ) as run:
            outcome.run_id = run.info.run_id
            _defend_and_evaluate(row, n, seed, victim, env, job, outcome)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed defense must not sink the comparison
        interrupts.raise_if_pending(exc)  # raised while a signal asked to stop: the stop, not a failed defense
        if is_store_error(exc):
            if outcome.result is None:  # not evaluated yet: done again, without the store
                redo = run_task(task, victim, env, job, log=False)
                redo.store_error, redo.run_id = store_error_line(exc), outcome.run_id
                return redo
            outcome.status, outcome.error, outcome.logged = "FINISHED", None, False
            outcome.store_error = store_error_line(exc)
            return outcome
        env.progress.message(f"  {row.label} n={n} seed={seed} failed: {outcome.error}")
        return outcome
    outcome.status = "FINISHED"
    return outcome


@dataclass
class Defended:
    """A defended model and what it took: the defense's time and, with a repair, the repair's."""

    model: Any
    defense_time_s: float
    repair_time_s: float | None = None


def defend_timed(row: RowSpec, defense: Any, model: Any, ctx: Any, seed: int, device: Any) -> Defended:
    """``defense`` (of ``row``) on ``model`` under ``seed``, then ``row``'s repair under the same
    seed, each timed on ``device``: the one defense step of ``bdtool compare`` (``run_task``) and
    ``bdtool defend`` (core/experiment/defend.py)."""
    seed_everything(seed)
    with timed(device) as watch:
        defended = defense.defend(model, ctx)
    out = Defended(defended, watch.seconds)
    if row.repair_lr is not None:
        seed_everything(seed)
        with timed(device) as watch:
            out.model = row.make_repair().repair(out.model, ctx)
        out.repair_time_s = watch.seconds
    return out


def _parent_is_active(parent_run_id: str) -> bool:
    """In the comparison's own process the parent is the active run (a nested run); in a worker
    process nothing is active and the parent is named by id only."""
    import mlflow  # heavy: see core/tracking/store.py

    active = mlflow.active_run()
    return active is not None and active.info.run_id == parent_run_id


def _defend_and_evaluate(row: RowSpec, n: int, seed: int, victim: Victim, env: RunEnv, job: TaskJob,
                         outcome: RunOutcome, log: bool = True) -> None:
    """Inside the run of (row, n, seed): defend, repair, evaluate, log (unless ``log`` is False:
    the store has failed); fills ``outcome``."""
    import mlflow  # heavy: see core/tracking/store.py

    defense = row.make_defense()
    spec = victim.spec
    if log:
        _log_run_start(row, n, seed, victim, defense)
    progress = env.progress

    def log_metric(key: str, value: float, step: int | None = None) -> None:
        if log:
            mlflow.log_metric(namespaced(row.defense_name, key), float(value), step=step)

    def report_detection(report: DetectionReport) -> None:
        outcome.detection = detection_dict(report)
        if log:
            mlflow.log_metrics(detection_metrics(outcome.detection))

    knows = row.knowledge
    ctx = defense_context(victim, row.defense_cls, n, seed, env.device, trigger=knows is Knowledge.TRIGGER,
                          target=knows is not Knowledge.NONE,
                          progress=lambda label, d, t: progress(f"  {row.label}: {label}", d, t),
                          log_metric=log_metric, report_detection=report_detection)
    data = victim.data
    if log:
        _log_run_inputs(ctx, job.evaluation_input, spec.dataset, n, seed)
    defended = defend_timed(row, defense, victim.model, ctx, seed, env.device)
    model, outcome.defense_time_s, outcome.repair_time_s = defended.model, defended.defense_time_s, defended.repair_time_s
    result = evaluate(model, data.evaluation, victim.attack, data.num_classes, env.device)
    if any(getattr(m, "needs_model", False) for m in job.metric_classes):  # e.g. re-activation: retunes a copy
        probe = metric_probe(data, victim.attack, victim.train_config, seed, env.device)
        measured, measure_errors = measure_model_metrics(job.metric_classes, model, probe)
        result.extra.update(measured)
    else:
        measure_errors = []
    outcome.result = result
    outcome.metrics, errors = compute_metrics(job.metric_classes, result, victim.before, backdoored=spec.backdoored)
    errors = measure_errors + errors
    for message in errors:  # a broken metric plugin costs its number, not the run
        env.progress.message(f"  {row.label} n={n} seed={seed}: {message}")
    if not log:
        return
    if errors:
        mlflow.set_tag(tracking.METRIC_ERROR_TAG, "; ".join(errors)[:5000])
    metrics = {**outcome.metrics, "defense_time_s": outcome.defense_time_s,
               **{f"class_acc_{c}": a for c, a in enumerate(result.per_class_acc) if not math.isnan(a)}}
    if outcome.repair_time_s is not None:
        metrics["repair_time_s"] = outcome.repair_time_s
    logged = {k: v for k, v in to_mlflow_units(job.metric_classes, metrics).items() if not math.isnan(v)}
    model_id = None
    try:
        mlflow.log_dict(result.to_dict(), "evaluation.json")
        if job.log_models:  # the LoggedModel first, so that the metrics are logged against it
            model_id = tracking.log_model(
                model, data.evaluation.x, "model", logged_name=logged_model_name(row.label, n, seed),
                tags={tracking.DEFENSE_TAG: row.defense_name, tracking.ROW_TAG: row.label,
                      tracking.KNOWLEDGE_TAG: row.knowledge_label, "bdtool.n": n, "bdtool.seed": seed,
                      tracking.VICTIM_HASH_TAG: victim.config_hash})
    except OSError as exc:  # the artifact folder: the store's fault, not the defense's
        raise ArtifactLogError(
            f"cannot log the artifacts of run {mlflow.active_run().info.run_id} ({exc.strerror or exc})") from exc
    finally:  # the metrics whatever happened to the artifacts, linked to the evaluation half (and model)
        mlflow.log_metrics(logged, model_id=model_id, dataset=job.evaluation_input)


def _log_run_start(row: RowSpec, n: int, seed: int, victim: Victim, defense: Any) -> None:
    spec = victim.spec
    tracking.log_params_flat({
        "dataset": spec.dataset, "model": spec.model, **spec.model_params(), "attack": spec.attack,
        "target": spec.target, "poison_rate": spec.poison_rate, "victim_kind": spec.victim_kind(), "n": n, "seed": seed,
        "knowledge": row.knowledge_label, "defense": row.defense_name, "row": row.label,
        "repair": row.repair_cls.name if row.repair_cls is not None else None,
        "repair_lr": row.repair_lr, **{f"defense.{k}": v for k, v in defense.params_dict().items()},
    })
    set_description(_defense_description(row, n, seed, defense.params_dict(), victim))


def _defense_description(row: RowSpec, n: int, seed: int, params: dict[str, Any], victim: Victim) -> str:
    """The run's description (Markdown) in the MLflow UI: what this run of the comparison is."""
    spec = victim.spec
    lines = [f"**{row.label}**: defense `{row.defense_name}`, knowledge `{row.knowledge_label}`, n={n}, seed={seed}",
             "", f"Victim: {spec.dataset} / {spec.model} / {spec.attack} (target {target_text(spec.target)}, poison rate "
             f"{spec.poison_rate:g}), run `{victim.run_id}`."]
    if row.repair_lr is not None:
        lines += ["", f"Repair: `{row.repair_cls.name if row.repair_cls is not None else ''}` lr={row.repair_lr:g}"]
    if params:
        lines += ["", "Defense params: " + ", ".join(f"`{k}={v}`" for k, v in params.items())]
    return "\n".join(lines) + "\n"


def _log_run_inputs(ctx: Any, evaluation_input: Any, dataset: str, n: int, seed: int) -> None:
    """The data of a defense run as MLflow dataset inputs: what the defense trained on (D_U, or the
    clean training set for a retraining defense) and the evaluation half it was scored on."""
    import mlflow  # heavy: see core/tracking/store.py

    if len(ctx.unlearn):
        log_dataset_input(ctx.unlearn, f"{dataset} D_U n={n} seed={seed}", "training",
                                         dataset=dataset, split="unseen pool (D_U)", n=len(ctx.unlearn), seed=seed)
    if ctx.train is not None:
        log_dataset_input(ctx.train, f"{dataset} clean train", "training", dataset=dataset,
                                         split="train minus poisoned", n=len(ctx.train))
    if evaluation_input is not None:
        mlflow.log_input(evaluation_input, context="evaluation")
