"""The re-activation metric (plugins/builtin/reactivation.py): on a clean digits model the
retuning leaves the clean ASR at k = 0 and raises it with k; it retunes only on the unseen pool and
the attack, never the evaluation half; it is opt-in, computed in a comparison only when named, and
logged beside the ASR."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bdtool.cli import main
from bdtool.core.experiment.evaluation import metric_probe
from bdtool.core.experiment.victim import get_victim
from bdtool.core.experiment.victim_spec import VictimSpec
from bdtool.core.tensors import LabeledTensors
from bdtool.plugins.builtin import reactivation
from bdtool.plugins.builtin.reactivation import reactivated_acc, reactivated_asr, retuning_set


@pytest.fixture(scope="module")
def clean_model(run_env):
    return get_victim(VictimSpec(poison_rate=0.0), run_env)


def probe_of(victim, seed=0):
    return metric_probe(victim.data, victim.attack, victim.train_config, seed, torch.device("cpu"))


def test_on_a_clean_model_it_stays_at_the_clean_asr_at_k0_and_rises_with_k(clean_model):
    clean_asr = clean_model.before.asr
    for seed in (0, 1):
        probe = probe_of(clean_model, seed)
        asr = {k: reactivated_asr(clean_model.model, probe, k) for k in (0, 5, 20)}
        assert abs(asr[0] - clean_asr) <= 0.05, asr
        assert asr[5] >= asr[0] and asr[20] >= asr[5] + 0.3, asr  # more poisoned samples, more ASR
        assert reactivated_acc(clean_model.model, probe, 0) > clean_model.before.acc - 0.05  # clean retuning is harmless


def test_the_model_passed_in_is_not_changed(clean_model):
    before = {k: v.clone() for k, v in clean_model.model.state_dict().items()}
    reactivated_asr(clean_model.model, probe_of(clean_model), 20)
    assert all(torch.equal(before[k], v) for k, v in clean_model.model.state_dict().items())


def test_it_never_reads_the_evaluation_half(clean_model, monkeypatch):
    probe = probe_of(clean_model)
    evaluation = clean_model.data.evaluation
    # the probe holds no evaluation image: only the pool, behind asr/acc the numbers
    for f in dataclasses.fields(probe):
        value = getattr(probe, f.name)
        if isinstance(value, LabeledTensors):
            assert value is probe.pool and value is not evaluation
    seen: list[LabeledTensors] = []
    real = reactivation.train_loop
    monkeypatch.setattr(reactivation, "train_loop", lambda model, data, *a, **k: (seen.append(data), real(model, data, *a, **k))[1])
    reactivated_asr(clean_model.model, probe, 5)
    (data,) = seen
    pool = probe.pool
    allowed = {tuple(img.flatten().tolist()) for img in torch.cat([pool.x, probe.attack.apply(pool.x)])}
    pool_only = allowed - {tuple(img.flatten().tolist()) for img in evaluation.x}
    assert len(data) == 50 and int((data.y == 0).sum()) >= 5
    for img in data.x:
        key = tuple(img.flatten().tolist())
        assert key in allowed, "a retuning image that is neither a pool image nor a stamped one"
    assert sum(tuple(img.flatten().tolist()) in pool_only for img in data.x) >= 45  # not the evaluation half's
    stamped = data.x[:5]
    assert torch.equal(data.y[:5], torch.zeros(5, dtype=torch.long))
    assert torch.equal(probe.attack.apply(stamped), stamped)  # the trigger is already there (the patch is idempotent)


def test_retuning_set_is_k_poisoned_non_target_pool_images_and_clean_ones(clean_model):
    probe = probe_of(clean_model)
    data = retuning_set(probe, 5)
    assert len(data) == 50 and torch.equal(data.y[:5], torch.zeros(5, dtype=torch.long))
    assert not torch.equal(retuning_set(probe_of(clean_model, 1), 5).x, data.x)  # per seed
    assert len(retuning_set(probe, 0)) == 45


def test_opt_in_computed_only_when_named_and_logged(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    base = ["compare", "--device", "cpu", "--defense", "basicft:epochs=1", "--samples", "5", "--seeds", "1",
            "--no-log-models", "--json"]
    named = CliRunner().invoke(main, base + ["--experiment", "reactivation-on", "--metric", "asr", "--metric",
                                             "reactivation", "--metric", "reactivation_acc"])
    assert named.exit_code == 0, named.output
    payload = json.loads(named.stdout)
    (row,) = payload["rows"]
    assert 0.0 <= row["reactivation_mean"] <= 1.0 and 0.0 <= row["reactivation_acc_mean"] <= 1.0
    assert row["reactivation_mean"] >= row["asr_mean"] - 0.05  # BadNets comes back at least as strong
    plain = CliRunner().invoke(main, base + ["--experiment", "reactivation-off"])
    assert plain.exit_code == 0, plain.output
    assert "reactivation_mean" not in json.loads(plain.stdout)["rows"][0]
    client = MlflowClient(tracking_uri=mlflow_store)
    for experiment, present in (("reactivation-on", True), ("reactivation-off", False)):
        exp = client.get_experiment_by_name(experiment)
        runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bdtool.kind") == "defense"]
        assert runs and all(("reactivation" in r.data.metrics) is present for r in runs)
