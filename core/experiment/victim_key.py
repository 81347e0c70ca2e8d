"""A victim's cache key: a content hash of everything that determines the trained model
(docs/architecture.md, "Victims")."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace

from bdtool.core.compute.training import TrainConfig
from bdtool.core.data import DataBundle
from bdtool.core.experiment.victim_spec import VictimSpec
from bdtool.core.interfaces import Attack

VICTIM_RECIPE_VERSION = 1
"""Bump when training code changes in a way that should invalidate cached victims."""


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
    if bundle.image_shape[0] != bundle.image_shape[1]:  # a non-square folder (size=HxW)
        payload["image_shape"] = list(bundle.image_shape)
    if spec.model_args:  # entered only when given, as below: every earlier key unchanged
        payload["model_args"] = [list(pair) for pair in spec.model_args]
    if spec.normalize:
        payload["normalize"] = spec.normalize
    if bundle.fingerprint:
        payload["data_fingerprint"] = bundle.fingerprint
    if weights_sha256 is not None:
        payload.update(user_weights_sha256=weights_sha256, train=None, seed=None, poison_rate=None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
