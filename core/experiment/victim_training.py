"""Training a victim and logging it as an MLflow run of kind ``victim``: parameters, per-epoch
metrics, the final evaluation, the poisoned indices and the model; the hash tag last, so that only
a completely logged victim is ever found (docs/architecture.md, "Victims")."""

from __future__ import annotations

import time
from dataclasses import asdict

from bdtool.core import tracking
from bdtool.core.compute.device import seed_everything
from bdtool.core.compute.training import TrainConfig, train_supervised
from bdtool.core.data import DataBundle
from bdtool.core.experiment.components import build_model
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.evaluation import evaluate
from bdtool.core.experiment.splits import ExperimentData
from bdtool.core.experiment.victim_spec import Victim, VictimSpec
from bdtool.core.interfaces import Attack
from bdtool.core.tracking.inputs import log_dataset_input
from bdtool.core.tracking.tags import KIND_TAG, VICTIM_HASH_TAG


def train_victim(spec: VictimSpec, env: RunEnv, bundle: DataBundle, attack: Attack, data: ExperimentData,
                 train_config: TrainConfig, digest: str, uri: str, poison_seconds: float = 0.0,
                 clean: "Victim | None" = None) -> Victim:
    """Train the victim of ``spec`` under its seed on the poisoned ``data`` and log it."""
    import mlflow  # heavy: imported where a run is logged (core/tracking/store.py)

    experiment_id = tracking.ensure_experiment(env.experiment, uri)  # only to log into (a copied store refuses)
    seed_everything(spec.seed)
    model = build_model(env.registries, spec.model, bundle, spec.model_args, spec.normalize)  # re-created under the seed
    run_name = (f"clean {spec.dataset}/{spec.model}" if spec.poison_rate == 0 else
                f"victim {spec.dataset}/{spec.model}/{spec.attack}")
    with tracking.tracked_run(experiment_id=experiment_id, run_name=run_name,
                              tags={KIND_TAG: "victim", **tracking.standard_tags(env.device)}) as run:
        tracking.log_params_flat({
            "dataset": spec.dataset, "model": spec.model, **spec.model_params(), "attack": spec.attack, "target": spec.target,
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
        tracking.log_model(model, data.evaluation.x, "model", logged_name=f"victim-{spec.victim_kind()}-{digest[:12]}",
                           tags={VICTIM_HASH_TAG: digest, "bdtool.attack": spec.attack, "bdtool.dataset": spec.dataset})
        # The hash tag is set last: only a completely logged victim is ever found by the cache.
        mlflow.set_tag(VICTIM_HASH_TAG, digest)
    return Victim(spec, digest, attack, bundle, data, model, before, run.info.run_id, False, seconds, train_config)
