"""The victim cache in the MLflow store: a finished victim run found by its hash, loaded back
(a damaged one tagged and skipped), and the lock under which processes that need the same
victim train it once (docs/architecture.md, "Victims")."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from bdtool.core.compute.training import TrainConfig
from bdtool.core.data import DataBundle
from bdtool.core.experiment.components import build_model
from bdtool.core.experiment.env import RunEnv, notice
from bdtool.core.experiment.evaluation import evaluate
from bdtool.core.experiment.splits import ExperimentData
from bdtool.core.experiment.victim_spec import Victim, VictimSpec
from bdtool.core.interfaces import Attack
from bdtool.core.tracking.locations import victim_lock_path
from bdtool.core.tracking.locks import file_lock
from bdtool.core.tracking.models import download_state_dict, mark_damaged
from bdtool.core.tracking.serialization import DamagedModelFileError
from bdtool.core.tracking.tags import DAMAGED_TAG, KIND_TAG, VICTIM_HASH_TAG


def find_cached_run(digest: str) -> str | None:
    """A finished victim run with this hash, in any experiment of the store, not marked damaged
    (``bdtool.damaged``: its model file was found damaged, see ``load_cached``)."""
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


@contextmanager
def victim_lock(uri: str, digest: str, env: RunEnv | None = None) -> Iterator[None]:
    """Held from looking the victim ``digest`` up to logging it: a second process waits (saying
    so when ``env`` is given), then finds the run (docs/architecture.md, "Victims")."""
    on_wait = None if env is None else (
        lambda: notice(env, f"waiting for another bdtool process training victim {digest}"))
    with file_lock(victim_lock_path(uri, digest), on_wait=on_wait):
        yield


def load_cached(spec: VictimSpec, env: RunEnv, bundle: DataBundle, attack: Attack, data: ExperimentData,
                train_config: TrainConfig, digest: str) -> Victim | None:
    """The cached victim ``digest``, loaded and evaluated; None when there is none, or when its
    model file is damaged (then tagged ``bdtool.damaged`` and reported in one line)."""
    cached = find_cached_run(digest)
    if cached is None:
        return None
    model = build_model(env.registries, spec.model, bundle, spec.model_args, spec.normalize)
    try:
        model.load_state_dict(download_state_dict(cached, "model"))
    except (DamagedModelFileError, RuntimeError) as exc:  # RuntimeError: wrong keys or shapes
        reason = exc.reason if isinstance(exc, DamagedModelFileError) else \
            f"model/state_dict.pt does not fit {spec.model} ({str(exc).strip().splitlines()[0][:160]})"
        mark_damaged(cached, reason)
        notice(env, f"cached victim {digest} (run {cached}) is damaged: {reason}; training it again")
        return None
    model.to(env.device).eval()
    before = evaluate(model, data.evaluation, attack, bundle.num_classes, env.device)
    env.progress.message(f"reusing victim {digest} (run {cached}): ACC {before.acc:.3f}, ASR {before.asr:.3f}")
    return Victim(spec, digest, attack, bundle, data, model, before, cached, True, 0.0, train_config)
