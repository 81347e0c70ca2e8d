"""The comparison runner behind ``bdtool compare`` (DESIGN.md §7–9).

One parent MLflow run per comparison; a nested run per (row, n, seed). Every row runs on a fresh
copy of the victim with the same D_U for a given (n, seed). A row that raises is marked FAILED
(its error as a tag) and the comparison goes on; Ctrl-C marks the open runs KILLED and re-raises.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


from bdtool.core.device import seed_everything, timed
from bdtool.core.errors import BdtoolError
from bdtool.core.interfaces import DefenseContext
from bdtool.core.metrics import EvalResult, evaluate, score
from bdtool.core.rows import REPAIR_NAME, RowSpec
from bdtool.core.splits import split_test
from bdtool.core.victim import RunEnv, Victim, VictimSpec, get_victim, load_dataset

if TYPE_CHECKING:
    from bdtool.core.report import Summary

COMPARISON_TAG = "bdtool.kind"


@dataclass
class CompareConfig:
    spec: VictimSpec
    rows: list[RowSpec]
    samples: list[int] = field(default_factory=lambda: [50])
    seeds: int = 3
    log_models: bool = True
    output_dir: str | None = None
    """Also copy the summary (Markdown, CSV, JSON, plots) here, as logged to the parent run."""


@dataclass
class RunOutcome:
    """One (row, n, seed) result. ``result`` is None when the row failed."""

    label: str
    defense: str
    n: int
    seed: int
    bdk: bool
    status: str  # FINISHED | FAILED
    result: EvalResult | None = None
    score: float = float("nan")
    defense_time_s: float = float("nan")
    repair_time_s: float | None = None
    run_id: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "defense": self.defense, "n": self.n, "seed": self.seed, "bdk": self.bdk,
            "status": self.status, "score": self.score, "defense_time_s": self.defense_time_s,
            "repair_time_s": self.repair_time_s, "run_id": self.run_id, "error": self.error,
            "eval": self.result.to_dict() if self.result else None,
        }


@dataclass
class ComparisonResult:
    victim: Victim
    config: CompareConfig
    outcomes: list[RunOutcome]
    parent_run_id: str
    summary: "Summary"


def row_sizes(row: RowSpec, config: CompareConfig, victim: Victim) -> list[int]:
    """The n of each run of ``row``: the requested sample sizes, or, for a defense that trains on
    the training set and ignores D_U (retraining), one run whose n is the clean training-set size
    (the supplement's Table 7 lists "Retraining 47500")."""
    if row.defense_cls.needs_training_set:
        return [len(victim.data.train) - len(victim.data.poisoned_indices)]
    return list(config.samples)


def validate_samples(samples: list[int], pool_size: int) -> None:
    for n in samples:
        if n <= 0:
            raise BdtoolError(f"--samples must be positive, got {n}")
        if n > pool_size:
            raise BdtoolError(
                f"--samples {n} is larger than the unseen pool ({pool_size} images of this dataset's test split); "
                "use a smaller value"
            )


def run_comparison(config: CompareConfig, env: RunEnv, registries) -> ComparisonResult:
    """Validate everything, get the victim, run every (row, n, seed) and log it all to MLflow."""
    import mlflow

    from bdtool.core import tracking
    from bdtool.core.report import aggregate, write_report

    if config.seeds < 1:
        raise BdtoolError(f"--seeds must be at least 1, got {config.seeds}")
    if not config.rows:
        raise BdtoolError("no defense rows to run; pass --defense NAME (see bdtool list defenses)")
    bundle = load_dataset(config.spec.dataset, env)
    validate_samples(config.samples, len(split_test(bundle.test.y).pool_indices))
    repair_cls = registries.repairs.get(REPAIR_NAME) if any(r.repair_lr is not None for r in config.rows) else None

    victim = get_victim(config.spec, env, bundle=bundle)
    uri = tracking.setup_tracking(env.tracking_uri)
    experiment_id = tracking.ensure_experiment(env.experiment, uri)
    total = sum(len(row_sizes(row, config, victim)) for row in config.rows) * config.seeds
    outcomes: list[RunOutcome] = []
    with tracking.tracked_run(
        experiment_id=experiment_id,
        run_name=f"compare {config.spec.dataset}/{config.spec.model}/{config.spec.attack}",
        tags={COMPARISON_TAG: "comparison", "bdtool.victim_run_id": victim.run_id,
              "bdtool.victim_hash": victim.config_hash, **tracking.standard_tags(env.device)},
    ) as parent:
        tracking.log_params_flat({
            "dataset": config.spec.dataset, "model": config.spec.model, "attack": config.spec.attack,
            "target": config.spec.target, "poison_rate": config.spec.poison_rate,
            "samples": "+".join(map(str, config.samples)), "seeds": config.seeds,
            "rows": " | ".join(r.text for r in config.rows), "victim_run_id": victim.run_id,
            **{f"attack.{k}": v for k, v in victim.attack.params_dict().items()},
        })
        mlflow.log_metrics({"before_acc": victim.before.acc, "before_asr": victim.before.asr,
                            "before_ctca": victim.before.ctca, "before_min_class_acc": victim.before.min_class_acc})
        done = 0
        for row in config.rows:
            for n in row_sizes(row, config, victim):
                for seed in range(config.seeds):
                    env.progress(f"compare ({row.label}, n={n}, seed={seed})", done, total)
                    outcomes.append(_run_one(row, n, seed, victim, env, experiment_id, repair_cls, config.log_models))
                    done += 1
        env.progress("compare", total, total)
        summary = aggregate(victim, outcomes, config)
        with tempfile.TemporaryDirectory() as tmp:
            write_report(summary, Path(tmp))
            mlflow.log_artifacts(tmp, artifact_path="summary")
            if config.output_dir:
                shutil.copytree(tmp, config.output_dir, dirs_exist_ok=True)
    return ComparisonResult(victim, config, outcomes, parent.info.run_id, summary)


def _run_one(row: RowSpec, n: int, seed: int, victim: Victim, env: RunEnv, experiment_id: str,
             repair_cls, log_models: bool) -> RunOutcome:
    import mlflow

    from bdtool.core import tracking

    outcome = RunOutcome(label=row.label, defense=row.defense_name, n=n, seed=seed, bdk=row.bdk, status="RUNNING")
    run = mlflow.start_run(
        experiment_id=experiment_id, nested=True, run_name=f"{row.label} n={n} seed={seed}",
        tags={"bdtool.kind": "defense", "bdtool.row": row.label, "bdtool.defense": row.defense_name,
              "bdtool.victim_run_id": victim.run_id, "bdtool.victim_hash": victim.config_hash,
              **tracking.standard_tags(env.device)},
    )
    outcome.run_id = run.info.run_id
    try:
        defense = row.make_defense()
        spec = victim.spec
        tracking.log_params_flat({
            "dataset": spec.dataset, "model": spec.model, "attack": spec.attack, "target": spec.target,
            "poison_rate": spec.poison_rate, "n": n, "seed": seed,
            "knowledge": "bdk" if row.bdk else "none", "defense": row.defense_name, "row": row.label,
            "repair_lr": row.repair_lr, **{f"defense.{k}": v for k, v in defense.params_dict().items()},
        })
        data = victim.data
        progress = env.progress

        def log_metric(key: str, value: float, step: int | None = None) -> None:
            mlflow.log_metric(key, float(value), step=step)

        ctx = DefenseContext(
            # A defense that trains on the training set gets no D_U (its n is the training-set size).
            unlearn=data.pool.subset([]) if row.defense_cls.needs_training_set else data.draw_unlearn(n, seed),
            num_classes=data.num_classes,
            device=env.device,
            seed=seed,
            attack=victim.attack if row.bdk else None,
            target_class=victim.attack.target_class,
            draw_unlearn=None if row.defense_cls.needs_training_set else data.unlearn_drawer(n, seed),
            train=data.clean_train() if row.defense_cls.needs_training_set else None,
            train_recipe=victim.train_config if row.defense_cls.needs_training_set else None,
            progress=lambda label, d, t: progress(f"  {row.label}: {label}", d, t),
            log_metric=log_metric,
        )
        seed_everything(seed)
        with timed(env.device) as watch:
            model = defense.defend(victim.model, ctx)
        outcome.defense_time_s = watch.seconds
        if row.repair_lr is not None:
            repair = repair_cls(repair_cls.make_params({"lr": row.repair_lr}))
            seed_everything(seed)
            with timed(env.device) as watch:
                model = repair.repair(model, ctx)
            outcome.repair_time_s = watch.seconds
        result = evaluate(model, data.evaluation, victim.attack, data.num_classes, env.device)
        outcome.result = result
        outcome.score = score(result, victim.before)
        metrics = {"acc": result.acc, "asr": result.asr, "ctca": result.ctca,
                   "min_class_acc": result.min_class_acc, "score": outcome.score,
                   "defense_time_s": outcome.defense_time_s,
                   **{f"class_acc_{c}": a for c, a in enumerate(result.per_class_acc) if not math.isnan(a)}}
        if outcome.repair_time_s is not None:
            metrics["repair_time_s"] = outcome.repair_time_s
        mlflow.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)})
        mlflow.log_dict(result.to_dict(), "evaluation.json")
        if log_models:
            tracking.log_model(model, data.evaluation.x, "model")
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except Exception as exc:  # noqa: BLE001 - a failed defense must not sink the comparison
        message = f"{type(exc).__name__}: {exc}"
        mlflow.set_tag("bdtool.error", message[:5000])
        mlflow.log_text(traceback.format_exc(), "error.txt")
        mlflow.end_run("FAILED")
        env.progress.message(f"  {row.label} n={n} seed={seed} failed: {message}")
        outcome.status, outcome.error, outcome.result = "FAILED", message, None
        return outcome
    mlflow.end_run("FINISHED")
    outcome.status = "FINISHED"
    return outcome
