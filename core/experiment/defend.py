"""``bdtool defend``: one defense on the user's own model with the user's own clean images, for a
practitioner with no attack to evaluate (docs/own-models.md).

The threat model is what the user supplies (docs/architecture.md, "Threat models"): the trigger
(``--trigger-image``/``--trigger-mask`` with ``--target-label``), the target label only, or
nothing; the defense gets exactly that. D_U is drawn from the folder's training part (all of it
by default); clean accuracy (and, with the trigger, the attack success rate) is measured before
and after on the folder's test part, which the defense never sees. The defended model is written
as ``.safetensors`` (atomically) and an MLflow run (kind ``defend``) records the params, timings,
the model and the numbers.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import bdtool
from bdtool.core import interrupts, tracking
from bdtool.core.params import parse_key_values
from bdtool.core.tracking.models import logged_model_name
from bdtool.core.tracking.registry import Registration, register_version
from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.context import data_context
from bdtool.core.experiment.evaluation import evaluate
from bdtool.core.experiment.tasks import defend_timed
from bdtool.core.experiment.rows import RowSpec, parse_row, split_row_text
from bdtool.core.experiment.splits import ExperimentData
from bdtool.core.experiment.model_source import model_params
from bdtool.core.experiment.components import build_attack, build_model, check_model_name, load_dataset
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.weights import fit_weights, read_weights
from bdtool.core.interfaces import Knowledge
from bdtool.core.results import EvalResult
from bdtool.core.tracking.serialization import SAFETENSORS_SUFFIX, save_safetensors
from bdtool.core.tracking.inputs import log_dataset_input


@dataclass
class DefendConfig:
    weights: str
    """The model file (or ``runs:/``/``models:/`` URI)."""
    model: str
    """Its architecture: a registered model name or ``MODULE:CALLABLE`` (core/experiment/model_source.py)."""
    dataset: str
    """The clean images: ``folder:PATH`` (or any registered dataset)."""
    output: str
    """Where the defended ``.safetensors`` goes."""
    row: str
    """The defense, as a ``--defense`` row: ``NAME[:k=v,...]`` (the CLI's default; the core names
    no defense)."""
    target: int | None = None
    attack: str | None = None
    """The trigger: ``NAME:k=v,...`` of a registered attack (``image:trigger=...,mask=...``)."""
    samples: int | None = None
    """D_U size; None = the whole training part of the folder."""
    seed: int = 0
    log_model: bool = True
    register: "Registration | None" = None
    """``--register NAME[@ALIAS]``: the defended model as a new version of that registered model."""
    model_args: tuple[tuple[str, str], ...] = ()
    """``--model-arg`` pairs of a ``MODULE:CALLABLE`` model."""
    normalize: str | None = None
    """``--normalize``: the model's inputs normalised on the way in (core/compute/normalization.py)."""
    dry_run: bool = False
    """Check every input (the row, the folder, the weights against the architecture, the trigger)
    and return a :class:`DefendPlan`: no run, no file written."""


@dataclass
class DefendPlan:
    """What ``bdtool defend --dry-run`` checked and would run."""

    row: str
    knowledge: str
    weights_sha256: str
    n_unlearn: int
    n_holdout: int
    classes: int
    output: str
    dry_run: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DefendResult:
    run_id: str
    output: str
    row: str
    knowledge: str
    weights_sha256: str
    n_unlearn: int
    n_holdout: int
    before: EvalResult
    after: EvalResult
    """Measured by ``evaluation.evaluate`` on the folder's held-out part (ASR NaN without a
    trigger, CTCA NaN without a target label), as every comparison run is."""
    defense_time_s: float
    repair_time_s: float | None
    total_time_s: float
    timings: dict[str, float] = field(default_factory=dict)
    registered: str | None = None
    """``models:/NAME@ALIAS (version V)`` when ``--register`` made a model version."""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "before": self.before.to_dict(), "after": self.after.to_dict()}


_NEEDS = {Knowledge.TRIGGER: "the trigger: pass --trigger-image (and --trigger-mask) with --target-label",
          Knowledge.TARGET: "the target label: pass --target-label"}


def supplied_knowledge(target: int | None, attack: str | None) -> Knowledge:
    if attack is not None:
        return Knowledge.TRIGGER
    return Knowledge.TARGET if target is not None else Knowledge.NONE


def check_row(row: RowSpec, supplied: Knowledge) -> None:
    """A row may not know more than the user supplied, nor need a training set defend has not."""
    if row.defense_cls.needs_training_set:
        raise BdtoolError(f"--defense {row.text}: '{row.defense_name}' retrains from the poisoned training set, which "
                          "bdtool defend does not have; pick a defense that works from clean samples")
    if row.knowledge.rank > supplied.rank:
        raise BdtoolError(f"--defense {row.text}: the row knows '{row.knowledge.value}' but you supplied "
                          f"'{supplied.value}'; it needs {_NEEDS[row.knowledge]}")


def _metrics(prefix: str, m: EvalResult) -> dict[str, float]:
    values = {f"{prefix}acc": m.acc, f"{prefix}min_class_acc": m.min_class_acc, f"{prefix}asr": m.asr,
              f"{prefix}ctca": m.ctca}
    return {k: float(v) for k, v in values.items() if not math.isnan(v)}


def defend_model(config: DefendConfig, env: RunEnv) -> DefendResult | DefendPlan:
    """Validate, load the user's model and images, run the defense, write the defended model and
    log the run. Every user mistake is a ``BdtoolError`` before the run opens; a defense that
    fails ends its run FAILED (traceback in ``error.txt``) and is one line too."""
    import mlflow  # heavy: see core/tracking/store.py

    started = time.perf_counter()
    registries = env.registries
    supplied = supplied_knowledge(config.target, config.attack)
    needed = registries.defenses.get(split_row_text(config.row)[0]).required_knowledge()
    if needed.rank > supplied.rank:
        raise BdtoolError(f"--defense {config.row}: it needs {_NEEDS[needed]}; you supplied "
                          f"{'nothing' if supplied is Knowledge.NONE else 'the ' + supplied.phrase}")
    row = parse_row(config.row, supplied, registries)
    check_row(row, supplied)
    check_model_name(registries, config.model)
    output = Path(config.output)
    if output.suffix.lower() != SAFETENSORS_SUFFIX:
        raise BdtoolError(f"--output {config.output}: the defended model is written as {SAFETENSORS_SUFFIX}; "
                          f"name the file *{SAFETENSORS_SUFFIX}")
    timings: dict[str, float] = {}

    t = time.perf_counter()
    bundle = load_dataset(config.dataset, env)
    timings["load_data_s"] = time.perf_counter() - t
    if config.target is not None and not 0 <= config.target < bundle.num_classes:
        raise BdtoolError(f"--target-label {config.target} is out of range for {config.dataset} "
                          f"(0..{bundle.num_classes - 1})")
    attack = None
    if config.attack is not None:
        if config.target is None:
            raise BdtoolError("the trigger needs the target label it leads to: pass --target-label")
        name, _, options = config.attack.partition(":")
        opts = parse_key_values(options, "trigger")
        attack = build_attack(registries, name, opts, config.target)
        try:
            attack.apply(bundle.test.x[:1])
        except ValueError as exc:
            raise BdtoolError(f"trigger: {exc}") from None
    pool, holdout = bundle.train, bundle.test
    n = config.samples if config.samples is not None else len(pool)
    if not 0 < n <= len(pool):
        raise BdtoolError(f"--samples {n}: the folder's training part holds {len(pool)} images; pass 1..{len(pool)}")
    data = ExperimentData(train=pool.subset([]), poisoned_indices=torch.empty(0, dtype=torch.long), pool=pool,
                          evaluation=holdout, num_classes=bundle.num_classes)

    uri = tracking.setup_tracking(env.tracking_uri)
    t = time.perf_counter()
    weights = read_weights(config.weights)
    if output.exists() and output.resolve() == Path(weights.path).resolve():
        raise BdtoolError(f"--output {config.output} is the model file itself; write the defended model elsewhere")
    model = build_model(registries, config.model, bundle, config.model_args, config.normalize)
    fit_weights(model, weights.state, config.weights,
                f"{config.model} ({bundle.channels} channel(s), {'×'.join(map(str, bundle.image_shape))}, "
                f"{bundle.num_classes} classes)")
    model.to(env.device).eval()
    timings["load_model_s"] = time.perf_counter() - t
    if config.dry_run:
        return DefendPlan(row=row.label, knowledge=row.knowledge.value, weights_sha256=weights.sha256, n_unlearn=n,
                          n_holdout=len(holdout), classes=bundle.num_classes, output=str(output.resolve()))
    target = config.target if row.knowledge is not Knowledge.NONE else None
    before = evaluate(model, holdout, attack, bundle.num_classes, env.device, config.target)
    experiment_id = tracking.ensure_experiment(env.experiment, uri)

    def record_failure(exc: BaseException) -> None:
        mlflow.set_tag(tracking.ERROR_TAG, f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.log_text(traceback.format_exc(), "error.txt")

    defense = row.make_defense()
    run_id = ""
    try:
        with tracking.tracked_run(
            experiment_id=experiment_id, run_name=f"defend {Path(weights.path).name} with {row.label}",
            tags={tracking.KIND_TAG: "defend", tracking.DEFENSE_TAG: row.defense_name, tracking.ROW_TAG: row.label,
                  tracking.KNOWLEDGE_TAG: row.knowledge.value, tracking.SOURCE_TAG: config.weights[:5000],
                  tracking.SOURCE_SHA256_TAG: weights.sha256, **tracking.standard_tags(env.device)},
            on_error=record_failure,
        ) as run:
            run_id = run.info.run_id
            tracking.log_params_flat({
                "source": config.weights, "source_path": weights.path, "source_sha256": weights.sha256,
                "model": config.model, **model_params(config.model_args, config.normalize),
                "dataset": config.dataset, "n_unlearn": n, "n_holdout": len(holdout),
                "seed": config.seed, "knowledge": row.knowledge.value, "defense": row.defense_name, "row": row.label,
                "target": target, "attack": config.attack if row.knowledge is Knowledge.TRIGGER else None,
                "output": str(output.resolve()),
                "repair": row.repair_cls.name if row.repair_cls is not None else None, "repair_lr": row.repair_lr,
                **{f"defense.{k}": v for k, v in defense.params_dict().items()},
            })
            ctx = data_context(
                data, row.defense_cls, n, config.seed, env.device,
                attack=attack if row.knowledge is Knowledge.TRIGGER else None, target_class=target,
                progress=lambda label, d, total: env.progress(f"  {row.label}: {label}", d, total),
                log_metric=lambda key, value, step=None: mlflow.log_metric(
                    key if key.startswith(f"{row.defense_name}.") else f"{row.defense_name}.{key}", float(value),
                    step=step))
            log_dataset_input(ctx.unlearn, f"{config.dataset} D_U n={n}", "training",
                                             dataset=config.dataset, split="folder train part (D_U)", n=n,
                                             seed=config.seed)
            log_dataset_input(holdout, f"{config.dataset} held out", "evaluation",
                                             dataset=config.dataset, split="folder test part", n=len(holdout))
            done = defend_timed(row, defense, model, ctx, config.seed, env.device)
            defended, defense_time, repair_time = done.model, done.defense_time_s, done.repair_time_s
            after = evaluate(defended, holdout, attack, bundle.num_classes, env.device, config.target)
            t = time.perf_counter()
            save_safetensors(defended.eval().cpu(), output, metadata={
                "bdtool.version": bdtool.__version__, "architecture": config.model, "defense": row.label,
                "source_sha256": weights.sha256})
            timings["write_s"] = time.perf_counter() - t
            mlflow.log_artifact(str(output), artifact_path="defended")
            if config.log_model:
                tracking.log_model(defended, holdout.x, "model",
                                   logged_name=f"defended-{logged_model_name(row.label, n, config.seed)}",
                                   tags={tracking.DEFENSE_TAG: row.defense_name, tracking.ROW_TAG: row.label,
                                         tracking.KNOWLEDGE_TAG: row.knowledge.value,
                                         tracking.SOURCE_SHA256_TAG: weights.sha256})
            timings["total_s"] = time.perf_counter() - started
            mlflow.log_metrics({**_metrics("before_", before), **_metrics("", after), "defense_time_s": defense_time,
                                **({"repair_time_s": repair_time} if repair_time is not None else {}),
                                **{f"time_{k}": v for k, v in timings.items()}})
            registered = None
            if config.register is not None:
                version = register_version(config.register, f"runs:/{run_id}/defended", run_id, {
                    tracking.DEFENSE_TAG: row.defense_name, tracking.ROW_TAG: row.label,
                    tracking.KNOWLEDGE_TAG: row.knowledge.value, "bdtool.n": n, "bdtool.seed": config.seed,
                    "bdtool.source_sha256": weights.sha256, "bdtool.dataset": config.dataset,
                    **{f"bdtool.{k}": v for k, v in _metrics("", after).items()}})
                registered = f"{config.register.uri} (version {version})"
    except KeyboardInterrupt:
        raise
    except BdtoolError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed defense is one line, its run FAILED with the traceback
        interrupts.raise_if_pending(exc)
        raise BdtoolError(f"defense {row.label} failed ({type(exc).__name__}: {str(exc).strip()[:200]}); MLflow run "
                          f"{run_id or '(none)'} is marked FAILED, its traceback in error.txt") from None
    return DefendResult(run_id=run_id, output=str(output.resolve()), row=row.label, knowledge=row.knowledge.value,
                        weights_sha256=weights.sha256, n_unlearn=n, n_holdout=len(holdout), before=before,
                        after=after, defense_time_s=defense_time, repair_time_s=repair_time,
                        total_time_s=timings["total_s"], timings=timings, registered=registered)
