"""Victim (poisoned) models: trained once per configuration, cached in the MLflow store by a
content hash of that configuration, and reused by every later command (docs/architecture.md,
"Victims"). ``get_victim`` is the one way to a victim; its parts, by concern: ``victim_spec``
(what a victim is), ``components`` (datasets, models and attacks from the registries in
``RunEnv``: this module never imports a plugin), ``victim_key`` (the hash), ``victim_cache``
(lookup, loading, lock), ``victim_training`` (training and logging), ``user_victim`` (the user's
own weights)."""

from __future__ import annotations

import time
from dataclasses import replace

from torch import nn

from bdtool.core import tracking
from bdtool.core.data import DataBundle
from bdtool.core.errors import BdtoolError
from bdtool.core.compute.training import TrainConfig
from bdtool.core.experiment.components import build_attack, build_model, load_dataset, victim_recipe
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.splits import prepare_experiment
from bdtool.core.experiment.user_victim import user_victim
from bdtool.core.experiment.victim_cache import load_cached, victim_lock
from bdtool.core.experiment.victim_key import config_hash
from bdtool.core.experiment.victim_spec import Victim, VictimSpec, clean_spec
from bdtool.core.experiment.victim_training import train_victim
from bdtool.core.interfaces import ALL_TO_ALL, Attack, AttackContext


def get_victim(spec: VictimSpec, env: RunEnv, retrain: bool = False, bundle: DataBundle | None = None) -> Victim:
    """Return the cached victim for ``spec`` or train it (and log it as an MLflow run).

    ``bundle`` may pass the already loaded dataset of ``spec.dataset``. A cached victim whose
    model file is damaged is tagged ``bdtool.damaged``, reported in one line and trained again."""
    bundle = bundle if bundle is not None else load_dataset(spec.dataset, env)
    attack, train_config = check_victim_spec(spec, env, bundle)
    clean = _CleanModel(spec, env, bundle)
    attack_context = AttackContext(num_classes=bundle.num_classes, seed=spec.seed, device=env.device,
                                   clean_model=clean, progress=env.progress)
    start = time.perf_counter()
    data = prepare_experiment(bundle, attack, spec.poison_rate, spec.seed, attack_context)
    poison_seconds = time.perf_counter() - start - clean.seconds
    if spec.source is not None:
        return user_victim(spec, env, bundle, attack, data, train_config)
    digest = config_hash(spec, attack, train_config, bundle)
    uri = tracking.setup_tracking(env.tracking_uri)
    # Processes needing the same victim train it once: the lock is held from the lookup to the
    # logged run; a second process waits, then finds the run (docs/architecture.md, "Victims").
    with victim_lock(uri, digest, env):
        victim = None if retrain else load_cached(spec, env, bundle, attack, data, train_config, digest)
        if victim is None:
            victim = train_victim(spec, env, bundle, attack, data, train_config, digest, uri,
                                  poison_seconds, clean.victim)
    return replace(victim, poison_seconds=poison_seconds, clean=clean.victim)


def check_victim_spec(spec: VictimSpec, env: RunEnv, bundle: DataBundle) -> tuple[Attack, TrainConfig]:
    """Every check of ``spec`` that needs no training: the target within the data set's classes,
    the attack built from its parameters and tried on one image, the poison rate in [0, 1), the
    model built for the data set, the training recipe's ranges. One ``BdtoolError`` line each;
    ``get_victim`` and every ``--dry-run`` run it before any work."""
    if spec.target != ALL_TO_ALL and not 0 <= spec.target < bundle.num_classes:
        raise BdtoolError(f"target class {spec.target} is out of range for {spec.dataset} (0..{bundle.num_classes - 1})")
    if not 0.0 <= spec.poison_rate < 1.0:
        raise BdtoolError(f"--poison-rate must be in [0, 1), got {spec.poison_rate}")
    attack = build_attack(env.registries, spec.attack, dict(spec.attack_options), spec.target)
    attack.num_classes = bundle.num_classes
    if attack.all_to_all and attack.poison_rate_of == "target class":
        raise BdtoolError(f"attack {spec.attack} is clean-label (it poisons only the target class and keeps every "
                          "label) and cannot be all-to-all; use a dirty-label attack (badnets, blend, wanet, adap-*)")
    try:
        attack.apply(bundle.test.x[:1])
    except ValueError as exc:
        raise BdtoolError(f"attack {spec.attack}: {exc}") from None
    build_model(env.registries, spec.model, bundle, spec.model_args, spec.normalize)
    return attack, spec.train_config(victim_recipe(env.registries, spec.dataset))


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
