"""A user's own weights as the victim (``--victim SOURCE``; docs/own-models.md): fitted to the
architecture, evaluated on the evaluation half and logged once as a victim run."""

from __future__ import annotations

from bdtool.core import tracking
from bdtool.core.compute.training import TrainConfig
from bdtool.core.data import DataBundle
from bdtool.core.experiment.components import build_model
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.evaluation import evaluate
from bdtool.core.experiment.splits import ExperimentData
from bdtool.core.experiment.victim_cache import find_cached_run, victim_lock
from bdtool.core.experiment.victim_key import config_hash
from bdtool.core.experiment.victim_spec import Victim, VictimSpec
from bdtool.core.experiment.weights import fit_weights, read_weights
from bdtool.core.interfaces import Attack
from bdtool.core.tracking.inputs import log_dataset_input
from bdtool.core.tracking.tags import KIND_TAG, SOURCE_SHA256_TAG, SOURCE_TAG, VICTIM_HASH_TAG


def user_victim(spec: VictimSpec, env: RunEnv, bundle: DataBundle, attack: Attack, data: ExperimentData,
                 train_config: TrainConfig) -> Victim:
    """The user's weights (``spec.source``) as the victim: fitted to ``spec.model`` for the
    dataset, evaluated on the evaluation half under the attack and target the user states, and
    logged once as a victim run recording the source and its SHA-256 (the same file again reuses
    that run, found by a hash of the file's digest and the evaluation setup)."""
    import mlflow  # heavy: imported where a run is logged (core/tracking/store.py)

    uri = tracking.setup_tracking(env.tracking_uri)  # before reading: runs:/ and models:/ URIs need it
    weights = read_weights(str(spec.source))
    model = build_model(env.registries, spec.model, bundle, spec.model_args, spec.normalize)
    fit_weights(model, weights.state, f"--victim {spec.source}",
                f"{spec.model} ({spec.dataset}: {bundle.channels} channel(s), {'×'.join(map(str, bundle.image_shape))}, "
                f"{bundle.num_classes} classes)")
    model.to(env.device).eval()
    before = evaluate(model, data.evaluation, attack, bundle.num_classes, env.device)
    digest = config_hash(spec, attack, train_config, bundle, weights_sha256=weights.sha256)
    with victim_lock(uri, digest):
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
                "dataset": spec.dataset, "model": spec.model, **spec.model_params(), "attack": spec.attack, "target": spec.target,
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
            tracking.log_model(model, data.evaluation.x, "model", logged_name=f"your-victim-{digest[:12]}",
                               tags={VICTIM_HASH_TAG: digest, tracking.SOURCE_SHA256_TAG: weights.sha256})
            mlflow.set_tag(VICTIM_HASH_TAG, digest)  # last, as for a trained victim
        env.progress.message(f"your victim {spec.source} (sha256 {weights.sha256[:12]}, run {run.info.run_id}): "
                             f"ACC {before.acc:.3f}, ASR {before.asr:.3f}")
    # not trained here: no training time (the Before row's time is "-")
    return Victim(spec, digest, attack, bundle, data, model, before, run.info.run_id, False, float("nan"), train_config)
