import os
import pickle

import pytest
import torch

from bdtool.plugins.builtin.models import SmallCNN
from bdtool.core.errors import UnsafeModelFileError
from bdtool.core.tracking.serialization import load_state_dict, save_state_dict
from bdtool.core.experiment.victim import VictimSpec, get_victim
from bdtool.core.tracking import VICTIM_HASH_TAG as HASH_TAG


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/bdtool-should-not-exist",))


def test_refuses_a_pickled_model_file(tmp_path):
    bad = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(1), "evil": Payload()}, bad, pickle_module=pickle)
    with pytest.raises(UnsafeModelFileError, match="refusing to load"):
        load_state_dict(bad)
    assert not os.path.exists("/tmp/bdtool-should-not-exist")


def test_refuses_a_whole_pickled_module(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(SmallCNN(1, 8, 10), path)
    with pytest.raises(UnsafeModelFileError):
        load_state_dict(path)


def test_state_dict_round_trip(tmp_path):
    model = SmallCNN(1, 8, 10)
    path = save_state_dict(model, tmp_path / "m.pt")
    state = load_state_dict(path)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_victim_run_in_sqlite_store_and_cache_reuse(digits_victim, run_env, mlflow_store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_store)
    run = client.get_run(digits_victim.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[HASH_TAG] == digits_victim.config_hash
    assert run.data.params["dataset"] == "digits" and run.data.params["poison_rate"] == "0.05"
    assert run.data.metrics["final_asr"] >= 0.95 and run.data.metrics["final_acc"] >= 0.90
    history = client.get_metric_history(run.info.run_id, "asr")
    assert len(history) == digits_victim.train_config.epochs
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/state_dict.pt" in artifacts
    assert client.get_experiment(run.info.experiment_id).artifact_location.endswith("/artifacts")

    again = get_victim(VictimSpec(), run_env)
    assert again.reused and again.run_id == digits_victim.run_id
    assert again.before.acc == pytest.approx(digits_victim.before.acc)
    for k, v in digits_victim.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k].cpu(), v.cpu())


def test_different_config_gets_a_different_victim(digits_victim, run_env):
    other = get_victim(VictimSpec(target=3, epochs=2), run_env)
    assert not other.reused and other.config_hash != digits_victim.config_hash
