"""The comparison runner behind ``bdtool compare`` (docs/architecture.md, "One comparison").

One parent MLflow run per comparison; a nested run per (row, n, seed). Every row runs on a fresh
copy of the victim with the same D_U for a given (n, seed). A row that raises is marked FAILED
(its error as a tag) and the comparison goes on; the parent ends FINISHED only when every run
ran, FAILED otherwise ("2 of 6 runs failed: ..." as its error tag; its summary is logged either
way). Ctrl-C or a signal marks the open runs KILLED and re-raises.
"""

from __future__ import annotations

import math
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bdtool.core import interrupts, tracking
from bdtool.core.compute.device import seed_everything, timed
from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.context import defense_context
from bdtool.core.experiment.evaluation import compute_metrics, evaluate
from bdtool.core.experiment.output import log_summary_artifacts, publish
from bdtool.core.experiment.report import Summary, aggregate, format_markdown, row_sizes, write_report
from bdtool.core.experiment.rows import RowSpec
from bdtool.core.experiment.splits import split_test
from bdtool.core.experiment.victim import RunEnv, Victim, VictimSpec, get_victim, load_dataset
from bdtool.core.interfaces import Knowledge
from bdtool.core.results import EvalResult


@dataclass
class CompareConfig:
    spec: VictimSpec
    rows: list[RowSpec]
    samples: list[int] = field(default_factory=lambda: [50])
    seeds: int = 3
    log_models: bool = True
    output_dir: str | None = None
    """Also copy the summary (Markdown, CSV, JSON, plots) here, as logged to the parent run."""
    metrics: list[str] = field(default_factory=list)
    """The metric columns of the table, in order; empty = every registered metric. Every
    registered metric is computed and logged whatever is shown."""


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
        }


def namespaced(defense_name: str, key: str) -> str:
    """A defense's own metric key under its name ("nad.ce_loss"), so it can never collide with
    bdtool's metrics (acc, asr, score, ...) or another defense's (docs/plugins.md)."""
    prefix = f"{defense_name}."
    return key if key.startswith(prefix) else prefix + key


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a missing number is null."""
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


@dataclass
class ComparisonResult:
    victim: Victim
    config: CompareConfig
    outcomes: list[RunOutcome]
    parent_run_id: str | None
    summary: Summary
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


def validate_samples(samples: list[int], pool_size: int) -> None:
    for n in samples:
        if n <= 0:
            raise BdtoolError(f"--samples must be positive, got {n}")
        if n > pool_size:
            raise BdtoolError(
                f"--samples {n} is larger than the unseen pool ({pool_size} images of this dataset's test split); "
                "use a smaller value"
            )


def run_comparison(config: CompareConfig, env: RunEnv) -> ComparisonResult:
    """Validate everything, get the victim, run every (row, n, seed) and log it all to MLflow."""
    import mlflow  # heavy: see core/tracking/store.py

    if config.seeds < 1:
        raise BdtoolError(f"--seeds must be at least 1, got {config.seeds}")
    if not config.rows:
        raise BdtoolError("no defense rows to run; pass --defense NAME (see bdtool list defenses)")
    bundle = load_dataset(config.spec.dataset, env)
    validate_samples(config.samples, len(split_test(bundle.test.y).pool_indices))

    victim = get_victim(config.spec, env, bundle=bundle)
    uri = tracking.setup_tracking(env.tracking_uri)
    experiment_id = tracking.ensure_experiment(env.experiment, uri)
    total = sum(len(row_sizes(row, config.samples, victim)) for row in config.rows) * config.seeds
    outcomes: list[RunOutcome] = []

    def record_failure(exc: BaseException) -> None:
        mlflow.set_tag(tracking.ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])

    state = StoreState()
    parent = None
    try:
        with tracking.tracked_run(
            experiment_id=experiment_id,
            run_name=f"compare {config.spec.dataset}/{config.spec.model}/{config.spec.attack}",
            tags={tracking.KIND_TAG: "comparison", tracking.VICTIM_RUN_TAG: victim.run_id,
                  tracking.VICTIM_HASH_TAG: victim.config_hash, **tracking.standard_tags(env.device)},
            on_error=record_failure,
        ) as parent:
            tracking.log_params_flat({
                "dataset": config.spec.dataset, "model": config.spec.model, "attack": config.spec.attack,
                "target": config.spec.target, "poison_rate": config.spec.poison_rate,
                "samples": "+".join(map(str, config.samples)), "seeds": config.seeds,
                "rows": " | ".join(r.text for r in config.rows), "victim_run_id": victim.run_id,
                **{f"attack.{k}": v for k, v in victim.attack.params_dict().items()},
                **({"victim_source": config.spec.source} if config.spec.source is not None else {}),
            })
            mlflow.log_metrics({"before_acc": victim.before.acc, "before_asr": victim.before.asr,
                                "before_ctca": victim.before.ctca, "before_min_class_acc": victim.before.min_class_acc})
            tracking.log_params_flat({"knowledge": " | ".join(f"{r.label}: {r.knowledge_label}" for r in config.rows),
                                      "metrics": "+".join(config.metrics) or "all"})
            # The evaluation half is the same for every run: its dataset input (a digest of all its
            # images) is built once and logged in each run.
            evaluation_input = tracking.store.dataset_input(
                victim.data.evaluation, f"{config.spec.dataset} evaluation", dataset=config.spec.dataset,
                split="test (evaluation half)", n=len(victim.data.evaluation))
            done = 0
            for row in config.rows:
                for n in row_sizes(row, config.samples, victim):
                    for seed in range(config.seeds):
                        env.progress(f"compare ({row.label}, n={n}, seed={seed})", done, total)
                        outcome, failure = _run_one(row, n, seed, victim, env, experiment_id, config.log_models,
                                                    evaluation_input, log=state.error is None)
                        outcomes.append(outcome)
                        if failure is not None and state.error is None:  # the rest runs without the store
                            state.error = tracking.store.store_error_line(failure)
                            env.progress.message(f"  the tracking store failed ({state.error}); the comparison goes on "
                                                 "without logging")
                        state.unlogged += state.error is not None
                        done += 1
            env.progress("compare", total, total)
            metric_classes = [e.obj for e in sorted(env.registries.metrics, key=lambda e: (e.obj.column_order, e.name))]
            shown = [env.registries.metrics.get(name) for name in config.metrics] or None
            state.summary = summary = aggregate(victim, outcomes, config, metric_classes, shown)
            with tempfile.TemporaryDirectory() as tmp:
                write_report(summary, Path(tmp))
                if config.output_dir:  # first: the results are kept whatever the store does next
                    publish(tmp, config.output_dir)
                if state.error is None:
                    try:
                        log_summary_artifacts(tmp, "summary")
                        tracking.store.set_description(format_markdown(summary))
                    except Exception as exc:
                        if not tracking.store.is_store_error(exc):
                            raise
                        state.error = str(exc) if isinstance(exc, BdtoolError) else tracking.store.store_error_line(exc)
                        state.summary_unlogged = True
            reason = "; ".join(r for r in (failure_reason(outcomes), state.error and f"not logged: {state.error}") if r)
            if reason:  # FINISHED only when every run ran and was logged; the summary is logged either way
                raise tracking.RunFailed(reason)
    except Exception as exc:
        interrupts.raise_if_pending(exc)
        if not tracking.store.is_store_error(exc):
            raise
        if state.summary is None:  # nothing computed yet: one line
            raise BdtoolError(f"the tracking store {uri} failed before any result ({tracking.store.store_error_line(exc)}); "
                              "check it (bdtool checks it before any work) and run again") from None
        state.error = state.error or tracking.store.store_error_line(exc)
        state.summary_unlogged = True
    return ComparisonResult(victim, config, outcomes, parent.info.run_id if parent is not None else None,
                            state.summary, state.error, state.unlogged, state.summary_unlogged)


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


def _run_one(row: RowSpec, n: int, seed: int, victim: Victim, env: RunEnv, experiment_id: str,
             log_models: bool, evaluation_input: Any, log: bool = True) -> tuple[RunOutcome, BaseException | None]:
    """One (row, n, seed) in a nested run: its outcome, and the store's error when the store
    failed during it (``tracking.store.is_store_error``). Then the outcome keeps its result when the
    defense had already been evaluated, or the run is done again without the store (``log=False``,
    as every later run): a store failing mid-comparison loses no result."""
    import mlflow  # heavy: see core/tracking/store.py

    outcome = RunOutcome(label=row.label, defense=row.defense_name, n=n, seed=seed, knowledge=row.knowledge_label,
                         status="RUNNING")
    if not log:
        try:
            _defend_and_evaluate(row, n, seed, victim, env, log_models, outcome, evaluation_input, log=False)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed defense must not sink the comparison
            interrupts.raise_if_pending(exc)
            outcome.status, outcome.error, outcome.result = "FAILED", f"{type(exc).__name__}: {exc}", None
            env.progress.message(f"  {row.label} n={n} seed={seed} failed: {outcome.error}")
            return outcome, None
        outcome.status = "FINISHED"
        return outcome, None

    def record_failure(exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        outcome.status, outcome.error = "FAILED", message
        if not tracking.store.is_store_error(exc):
            outcome.result = None
        mlflow.set_tag(tracking.ERROR_TAG, message[:5000])
        mlflow.log_text(traceback.format_exc(), "error.txt")

    try:
        with tracking.tracked_run(
            experiment_id=experiment_id, nested=True, run_name=f"{row.label} n={n} seed={seed}",
            tags={tracking.KIND_TAG: "defense", tracking.ROW_TAG: row.label, tracking.KNOWLEDGE_TAG: row.knowledge_label,
                  tracking.DEFENSE_TAG: row.defense_name,
                  tracking.VICTIM_RUN_TAG: victim.run_id, tracking.VICTIM_HASH_TAG: victim.config_hash,
                  **tracking.standard_tags(env.device)},
            on_error=record_failure,
        ) as run:
            outcome.run_id = run.info.run_id
            _defend_and_evaluate(row, n, seed, victim, env, log_models, outcome, evaluation_input)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed defense must not sink the comparison
        interrupts.raise_if_pending(exc)  # raised while a signal asked to stop: the stop, not a failed defense
        if tracking.store.is_store_error(exc):
            if outcome.result is None:  # not evaluated yet: done again, without the store
                return _run_one(row, n, seed, victim, env, experiment_id, log_models, evaluation_input, log=False)[0], exc
            outcome.status, outcome.error = "FINISHED", None
            return outcome, exc
        env.progress.message(f"  {row.label} n={n} seed={seed} failed: {outcome.error}")
        return outcome, None
    outcome.status = "FINISHED"
    return outcome, None


def _defend_and_evaluate(row: RowSpec, n: int, seed: int, victim: Victim, env: RunEnv, log_models: bool,
                         outcome: RunOutcome, evaluation_input: Any, log: bool = True) -> None:
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

    knows = row.knowledge
    ctx = defense_context(victim, row.defense_cls, n, seed, env.device, trigger=knows is Knowledge.TRIGGER,
                          target=knows is not Knowledge.NONE,
                          progress=lambda label, d, t: progress(f"  {row.label}: {label}", d, t),
                          log_metric=log_metric)
    data = victim.data
    if log:
        _log_run_inputs(ctx, evaluation_input, spec.dataset, n, seed)
    seed_everything(seed)
    with timed(env.device) as watch:
        model = defense.defend(victim.model, ctx)
    outcome.defense_time_s = watch.seconds
    if row.repair_lr is not None:
        repair = row.make_repair()
        seed_everything(seed)
        with timed(env.device) as watch:
            model = repair.repair(model, ctx)
        outcome.repair_time_s = watch.seconds
    result = evaluate(model, data.evaluation, victim.attack, data.num_classes, env.device)
    outcome.result = result
    outcome.metrics, errors = compute_metrics(env.registries.metrics, result, victim.before)
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
    mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)})
    try:
        mlflow.log_dict(result.to_dict(), "evaluation.json")
        if log_models:
            tracking.log_model(model, data.evaluation.x, "model")
    except OSError as exc:  # the artifact folder: the store's fault, not the defense's
        raise tracking.store.ArtifactLogError(
            f"cannot log the artifacts of run {mlflow.active_run().info.run_id} ({exc.strerror or exc})") from exc


def _log_run_start(row: RowSpec, n: int, seed: int, victim: Victim, defense: Any) -> None:
    spec = victim.spec
    tracking.log_params_flat({
        "dataset": spec.dataset, "model": spec.model, "attack": spec.attack, "target": spec.target,
        "poison_rate": spec.poison_rate, "n": n, "seed": seed,
        "knowledge": row.knowledge_label, "defense": row.defense_name, "row": row.label,
        "repair": row.repair_cls.name if row.repair_cls is not None else None,
        "repair_lr": row.repair_lr, **{f"defense.{k}": v for k, v in defense.params_dict().items()},
    })
    tracking.store.set_description(_defense_description(row, n, seed, defense.params_dict(), victim))


def _defense_description(row: RowSpec, n: int, seed: int, params: dict[str, Any], victim: Victim) -> str:
    """The run's description (Markdown) in the MLflow UI: what this run of the comparison is."""
    spec = victim.spec
    lines = [f"**{row.label}**: defense `{row.defense_name}`, knowledge `{row.knowledge_label}`, n={n}, seed={seed}",
             "", f"Victim: {spec.dataset} / {spec.model} / {spec.attack} (target {spec.target}, poison rate "
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
        tracking.store.log_dataset_input(ctx.unlearn, f"{dataset} D_U n={n} seed={seed}", "training",
                                         dataset=dataset, split="unseen pool (D_U)", n=len(ctx.unlearn), seed=seed)
    if ctx.train is not None:
        tracking.store.log_dataset_input(ctx.train, f"{dataset} clean train", "training", dataset=dataset,
                                         split="train minus poisoned", n=len(ctx.train))
    mlflow.log_input(evaluation_input, context="evaluation")
