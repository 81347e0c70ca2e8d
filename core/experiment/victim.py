"""Victim (poisoned) models: trained once per configuration, cached in the MLflow store by a
content hash of that configuration, and reused by every later command (docs/architecture.md,
"Victims"). Datasets, models and attacks come from the registries in ``RunEnv``: this module never
imports a plugin."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from bdtool.core import tracking
from bdtool.core.compute.device import seed_everything
from bdtool.core.compute.training import TrainConfig, train_supervised
from bdtool.core.data import DataBundle
from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.evaluation import evaluate
from bdtool.core.experiment.progress import ProgressPrinter
from bdtool.core.experiment.splits import ExperimentData, prepare_experiment
from bdtool.core.experiment.weights import fit_weights, read_weights
from bdtool.core.interfaces import Attack, AttackContext, DatasetSource
from bdtool.core.results import EvalResult
from bdtool.core.tracking.locks import file_lock
from bdtool.core.tracking.serialization import DamagedModelFileError
from bdtool.core.tracking.inputs import log_dataset_input
from bdtool.core.tracking.locations import victim_lock_path
from bdtool.core.tracking.models import mark_damaged
from bdtool.core.tracking.tags import DAMAGED_TAG, KIND_TAG, SOURCE_SHA256_TAG, SOURCE_TAG, VICTIM_HASH_TAG

VICTIM_RECIPE_VERSION = 1
"""Bump when training code changes in a way that should invalidate cached victims."""

RECIPES: dict[str, TrainConfig] = {
    # Measured on the 2-core CPU machine: digits reaches ACC ~0.97 / ASR ~1.0 in a few seconds,
    # Fashion-MNIST ACC >= 0.88 / ASR >= 0.95 in 6 epochs (~2 min). See docs/reproducing.md, "Victims".
    "digits": TrainConfig(epochs=20, lr=0.05, batch_size=64),
    "fashion-mnist": TrainConfig(epochs=6, lr=0.05, batch_size=128),
    "mnist": TrainConfig(epochs=4, lr=0.05, batch_size=128),
}
DEFAULT_RECIPE = TrainConfig(epochs=40, lr=0.05, batch_size=128)  # colour 32x32 sets, on a GPU


@dataclass(frozen=True)
class VictimSpec:
    dataset: str = "digits"
    model: str = "small-cnn"
    attack: str = "badnets"
    attack_options: tuple[tuple[str, str], ...] = ()
    target: int = 0
    poison_rate: float = 0.05
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    source: str | None = None
    """The user's weights (``--victim``: a file, ``runs:/...`` or ``models:/...``) instead of a
    victim bdtool trains; the dataset, attack and target then say how it is evaluated."""

    def train_config(self) -> TrainConfig:
        base = RECIPES.get(self.dataset, DEFAULT_RECIPE)
        overrides = {k: v for k, v in (("epochs", self.epochs), ("lr", self.lr), ("batch_size", self.batch_size)) if v is not None}
        config = replace(base, **overrides)
        try:
            config.validate()
        except ValueError as exc:
            raise BdtoolError(f"training recipe: {exc}") from None
        return config


@dataclass
class RunEnv:
    """Where and how work runs: the component registries, device, data location, MLflow store,
    progress output. ``registries`` is a ``bdtool.plugins.Registries`` (the CLI passes the
    process-wide one; tests may pass their own)."""

    registries: Any
    device: torch.device
    data_dir: str | None = None
    download: bool = False
    tracking_uri: str | None = None
    experiment: str = "bdtool"
    progress: ProgressPrinter = field(default_factory=lambda: ProgressPrinter(enabled=False))


@dataclass
class Victim:
    spec: VictimSpec
    config_hash: str
    attack: Attack
    bundle: DataBundle
    data: ExperimentData
    model: nn.Module
    before: EvalResult
    run_id: str
    reused: bool
    train_seconds: float
    train_config: TrainConfig
    poison_seconds: float = 0.0
    """Wall time of the attack's poisoning (``prepare`` + ``poison``), the clean model's training
    excluded; spent again when a cached victim is reused (the poisoned set is not stored)."""
    clean: "Victim | None" = None
    """The clean model the attack asked for at poisoning time (``AttackContext.clean_model``)."""

    def fresh_copy(self) -> nn.Module:
        return copy.deepcopy(self.model)


def build_attack(registries: Any, name: str, options: dict[str, Any], target: int) -> Attack:
    cls = registries.attacks.get(name)
    return cls(target_class=target, params=cls.make_params(options))


def build_model(registries: Any, name: str, bundle: DataBundle) -> nn.Module:
    arch = registries.models.get(name)()
    return arch.build(bundle.channels, bundle.image_size, bundle.num_classes)


def dataset_source(registries: Any, text: str) -> DatasetSource:
    """The dataset ``NAME`` or ``NAME:LOCATION`` (``folder:PATH``: a source that declares
    ``takes_location``) from the registry; a location given to a source that takes none, or
    missing where one is needed, is one line."""
    name, sep, location = text.partition(":")
    cls = registries.datasets.get(name)
    if cls.takes_location:
        if not sep or not location:
            raise BdtoolError(f"dataset '{name}' needs a location: --dataset {name}:PATH")
        return cls(location=location)
    if sep:
        raise BdtoolError(f"dataset '{name}' takes no location ('{text}'); use --dataset {name}")
    return cls()


def load_dataset(name: str, env: RunEnv) -> DataBundle:
    return dataset_source(env.registries, name).load(env.data_dir, env.download)


def clean_spec(spec: VictimSpec) -> VictimSpec:
    """The clean reference of ``spec``: the same dataset, model, seed and recipe, nothing poisoned
    (one cached model per such spec, whichever attack asks for it; see ``config_hash``)."""
    return replace(spec, poison_rate=0.0)


def config_hash(spec: VictimSpec, attack: Attack, train: TrainConfig, bundle: DataBundle,
                weights_sha256: str | None = None) -> str:
    """The victim's cache key: everything that determines the trained model (dataset and its
    shape, model, attack and its params, target, poison rate, seed, recipe). At poison rate 0
    nothing is poisoned, so the attack and target are left out: every attack shares one clean
    model per recipe. A folder data set's content digest (``bundle.fingerprint``) and the SHA-256
    of a user's weights enter it only when present, so the keys of every victim trained before
    them are unchanged."""
    if spec.poison_rate == 0:
        spec = replace(spec, attack="", attack_options=(), target=0)
    payload = {
        "recipe_version": VICTIM_RECIPE_VERSION,
        "dataset": spec.dataset,
        "shape": [len(bundle.train), bundle.channels, bundle.image_size, bundle.num_classes],
        "model": spec.model,
        "attack": spec.attack,
        "attack_params": attack.params_dict() if spec.attack else {},
        "target": spec.target,
        "poison_rate": spec.poison_rate,
        "seed": spec.seed,
        "train": asdict(train),
    }
    if bundle.fingerprint:
        payload["data_fingerprint"] = bundle.fingerprint
    if weights_sha256 is not None:
        payload.update(user_weights_sha256=weights_sha256, train=None, seed=None, poison_rate=None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def find_cached_run(digest: str) -> str | None:
    """A finished victim run with this hash, in any experiment of the store, not marked damaged
    (``bdtool.damaged``: its model file was found damaged, see ``get_victim``)."""
    from mlflow.entities import ViewType  # heavy: see core/tracking/store.py
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiment_ids:
        return None
    runs = client.search_runs(
        experiment_ids,
        # Defense runs carry the victim's hash too (to link to it): match victim runs only.
        filter_string=(f"tags.`{VICTIM_HASH_TAG}` = '{digest}' and tags.`{KIND_TAG}` = 'victim' "
                       "and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    # MLflow's filter has no "tag is absent": damaged runs are skipped here.
    return next((r.info.run_id for r in runs if DAMAGED_TAG not in r.data.tags), None)


def _notice(env: RunEnv, text: str) -> None:
    """A line the user should see even with --json (on stderr, which --json leaves free)."""
    if env.progress.enabled:
        env.progress.message(text)
    else:
        print(text, file=sys.stderr, flush=True)


def get_victim(spec: VictimSpec, env: RunEnv, retrain: bool = False, bundle: DataBundle | None = None) -> Victim:
    """Return the cached victim for ``spec`` or train it (and log it as an MLflow run).

    ``bundle`` may pass the already loaded dataset of ``spec.dataset``. A cached victim whose
    model file is damaged is tagged ``bdtool.damaged``, reported in one line and trained again."""
    bundle = bundle if bundle is not None else load_dataset(spec.dataset, env)
    if not 0 <= spec.target < bundle.num_classes:
        raise BdtoolError(f"target class {spec.target} is out of range for {spec.dataset} (0..{bundle.num_classes - 1})")
    attack = build_attack(env.registries, spec.attack, dict(spec.attack_options), spec.target)
    try:
        attack.apply(bundle.test.x[:1])
    except ValueError as exc:
        raise BdtoolError(f"attack {spec.attack}: {exc}") from None
    clean = _CleanModel(spec, env, bundle)
    attack_context = AttackContext(num_classes=bundle.num_classes, seed=spec.seed, device=env.device,
                                   clean_model=clean, progress=env.progress)
    start = time.perf_counter()
    data = prepare_experiment(bundle, attack, spec.poison_rate, spec.seed, attack_context)
    poison_seconds = time.perf_counter() - start - clean.seconds
    train_config = spec.train_config()
    if spec.source is not None:
        return _user_victim(spec, env, bundle, attack, data, train_config)
    digest = config_hash(spec, attack, train_config, bundle)
    uri = tracking.setup_tracking(env.tracking_uri)
    # Processes needing the same victim train it once: the lock is held from the lookup to the
    # logged run; a second process waits, then finds the run (docs/architecture.md, "Victims").
    lock = victim_lock_path(uri, digest)
    with file_lock(lock, on_wait=lambda: _notice(env, f"waiting for another bdtool process training victim {digest}")):
        victim = _get_or_train(spec, env, retrain, bundle, attack, data, train_config, digest, uri,
                               poison_seconds, clean.victim)
    return replace(victim, poison_seconds=poison_seconds, clean=clean.victim)


class _CleanModel:
    """``AttackContext.clean_model``: the clean reference victim (``clean_spec``), fetched from
    the store or trained on the first call only; ``seconds`` is the wall time that call spent."""

    def __init__(self, spec: VictimSpec, env: RunEnv, bundle: DataBundle) -> None:
        self.spec, self.env, self.bundle = clean_spec(spec), env, bundle
        self.victim: Victim | None = None
        self.seconds = 0.0

    def __call__(self) -> nn.Module:
        if self.victim is None:
            start = time.perf_counter()
            self.env.progress.message("the attack needs a clean model at poisoning time")
            self.victim = get_victim(self.spec, self.env, bundle=self.bundle)
            self.seconds = time.perf_counter() - start
        return self.victim.fresh_copy().eval()


def _get_or_train(spec: VictimSpec, env: RunEnv, retrain: bool, bundle: DataBundle, attack: Attack,
                  data: ExperimentData, train_config: TrainConfig, digest: str, uri: str,
                  poison_seconds: float = 0.0, clean: "Victim | None" = None) -> Victim:
    import mlflow  # heavy: imported where a run is logged (core/tracking/store.py)

    cached = None if retrain else find_cached_run(digest)
    if cached is not None:
        model = build_model(env.registries, spec.model, bundle)
        try:
            model.load_state_dict(tracking.download_state_dict(cached, "model"))
        except (DamagedModelFileError, RuntimeError) as exc:  # RuntimeError: wrong keys or shapes
            reason = exc.reason if isinstance(exc, DamagedModelFileError) else \
                f"model/state_dict.pt does not fit {spec.model} ({str(exc).strip().splitlines()[0][:160]})"
            mark_damaged(cached, reason)
            _notice(env, f"cached victim {digest} (run {cached}) is damaged: {reason}; training it again")
        else:
            model.to(env.device).eval()
            before = evaluate(model, data.evaluation, attack, bundle.num_classes, env.device)
            env.progress.message(f"reusing victim {digest} (run {cached}): ACC {before.acc:.3f}, ASR {before.asr:.3f}")
            return Victim(spec, digest, attack, bundle, data, model, before, cached, True, 0.0, train_config)

    experiment_id = tracking.ensure_experiment(env.experiment, uri)  # only to log into (a copied store refuses)
    seed_everything(spec.seed)
    model = build_model(env.registries, spec.model, bundle)  # re-created under the seed
    run_name = (f"clean {spec.dataset}/{spec.model}" if spec.poison_rate == 0 else
                f"victim {spec.dataset}/{spec.model}/{spec.attack}")
    with tracking.tracked_run(experiment_id=experiment_id, run_name=run_name,
                              tags={KIND_TAG: "victim", **tracking.standard_tags(env.device)}) as run:
        tracking.log_params_flat({
            "dataset": spec.dataset, "model": spec.model, "attack": spec.attack, "target": spec.target,
            "poison_rate": spec.poison_rate, "seed": spec.seed, "n_train": len(data.train),
            "n_poisoned": len(data.poisoned_indices), "n_pool": len(data.pool), "n_eval": len(data.evaluation),
            "poison_rate_of": attack.poison_rate_of,
            **({"n_noise": len(data.noise_indices)} if len(data.noise_indices) else {}),
            **({"clean_model_run": clean.run_id, "clean_model_hash": clean.config_hash} if clean else {}),
            **{f"attack.{k}": v for k, v in attack.params_dict().items()},
            **{f"train.{k}": v for k, v in asdict(train_config).items()},
        })

        log_dataset_input(
            data.train, f"{spec.dataset} poisoned train", "training", dataset=spec.dataset,
            split=f"train ({spec.attack}, poison rate {spec.poison_rate:g})", n=len(data.train),
            n_poisoned=len(data.poisoned_indices), seed=spec.seed)
        log_dataset_input(data.evaluation, f"{spec.dataset} evaluation", "evaluation",
                                         dataset=spec.dataset, split="test (evaluation half)", n=len(data.evaluation))

        def on_epoch(epoch: int, loss: float) -> None:
            result = evaluate(model, data.evaluation, attack, bundle.num_classes, env.device)
            mlflow.log_metrics({"train_loss": loss, "acc": result.acc, "asr": result.asr, "ctca": result.ctca}, step=epoch)
            if train_config.epochs <= 10 or epoch % max(1, train_config.epochs // 5) == 0:
                env.progress.message(f"  epoch {epoch}/{train_config.epochs}: loss {loss:.4f}  ACC {result.acc:.3f}  ASR {result.asr:.3f}")

        start = time.perf_counter()
        train_supervised(model, data.train, train_config, env.device, spec.seed, env.progress, on_epoch,
                         label=f"training victim {spec.dataset}/{spec.model}")
        seconds = time.perf_counter() - start
        before = evaluate(model, data.evaluation, attack, bundle.num_classes, env.device)
        mlflow.log_metrics({"final_acc": before.acc, "final_asr": before.asr, "final_ctca": before.ctca,
                            "final_min_class_acc": before.min_class_acc, "train_time_s": seconds,
                            "poison_time_s": poison_seconds,
                            **({"clean_model_acc": clean.before.acc,
                                "clean_model_train_time_s": clean.train_seconds} if clean else {})})
        mlflow.log_dict(before.to_dict(), "evaluation.json")
        mlflow.log_dict({"poisoned_indices": data.poisoned_indices.tolist(),
                         "noise_indices": data.noise_indices.tolist()}, "poisoned_indices.json")
        tracking.log_model(model, data.evaluation.x, "model")
        # The hash tag is set last: only a completely logged victim is ever found by the cache.
        mlflow.set_tag(VICTIM_HASH_TAG, digest)
    return Victim(spec, digest, attack, bundle, data, model, before, run.info.run_id, False, seconds, train_config)


def _user_victim(spec: VictimSpec, env: RunEnv, bundle: DataBundle, attack: Attack, data: ExperimentData,
                 train_config: TrainConfig) -> Victim:
    """The user's weights (``spec.source``) as the victim: fitted to ``spec.model`` for the
    dataset, evaluated on the evaluation half under the attack and target the user states, and
    logged once as a victim run recording the source and its SHA-256 (the same file again reuses
    that run, found by a hash of the file's digest and the evaluation setup)."""
    import mlflow  # heavy: imported where a run is logged (core/tracking/store.py)

    uri = tracking.setup_tracking(env.tracking_uri)  # before reading: runs:/ and models:/ URIs need it
    weights = read_weights(str(spec.source))
    model = build_model(env.registries, spec.model, bundle)
    fit_weights(model, weights.state, f"--victim {spec.source}",
                f"{spec.model} ({spec.dataset}: {bundle.channels} channel(s), {bundle.image_size}×{bundle.image_size}, "
                f"{bundle.num_classes} classes)")
    model.to(env.device).eval()
    before = evaluate(model, data.evaluation, attack, bundle.num_classes, env.device)
    digest = config_hash(spec, attack, train_config, bundle, weights_sha256=weights.sha256)
    lock = victim_lock_path(uri, digest)
    with file_lock(lock):
        cached = find_cached_run(digest)
        if cached is not None:
            env.progress.message(f"your victim {spec.source} (sha256 {weights.sha256[:12]}, run {cached}): "
                                 f"ACC {before.acc:.3f}, ASR {before.asr:.3f}")
            return Victim(spec, digest, attack, bundle, data, model, before, cached, True, float("nan"), train_config)
        experiment_id = tracking.ensure_experiment(env.experiment, uri)
        with tracking.tracked_run(experiment_id=experiment_id, run_name=f"victim {spec.source} ({spec.model})",
                                  tags={KIND_TAG: "victim", SOURCE_TAG: str(spec.source)[:5000],
                                        SOURCE_SHA256_TAG: weights.sha256, **tracking.standard_tags(env.device)}) as run:
            tracking.log_params_flat({
                "dataset": spec.dataset, "model": spec.model, "attack": spec.attack, "target": spec.target,
                "source": spec.source, "source_path": weights.path, "source_sha256": weights.sha256,
                "n_pool": len(data.pool), "n_eval": len(data.evaluation),
                **{f"attack.{k}": v for k, v in attack.params_dict().items()},
            })
            log_dataset_input(data.evaluation, f"{spec.dataset} evaluation", "evaluation",
                                             dataset=spec.dataset, split="test (evaluation half)",
                                             n=len(data.evaluation))
            mlflow.log_metrics({"final_acc": before.acc, "final_asr": before.asr, "final_ctca": before.ctca,
                                "final_min_class_acc": before.min_class_acc})
            mlflow.log_dict(before.to_dict(), "evaluation.json")
            tracking.log_model(model, data.evaluation.x, "model")
            mlflow.set_tag(VICTIM_HASH_TAG, digest)  # last, as for a trained victim
        env.progress.message(f"your victim {spec.source} (sha256 {weights.sha256[:12]}, run {run.info.run_id}): "
                             f"ACC {before.acc:.3f}, ASR {before.asr:.3f}")
    # not trained here: no training time (the Before row's time is "-")
    return Victim(spec, digest, attack, bundle, data, model, before, run.info.run_id, False, float("nan"), train_config)
