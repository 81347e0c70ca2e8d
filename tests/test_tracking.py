import os
import pickle

import pytest
import torch

from bdtool.plugins.builtin.models import SmallCNN
from bdtool.core.errors import UnsafeModelFileError
from bdtool.core.tracking.serialization import load_state_dict, save_state_dict
from bdtool.core.experiment.victim import get_victim
from bdtool.core.experiment.victim_spec import VictimSpec
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


def _garbled_payloads():
    """Bytes a damaged or hostile file may hold: random (seeded, so a failure reproduces), a torch
    file cut short or with flipped bytes, legacy-pickle prefixes. The unpickler raises a different
    exception type for many of them (IndexError, KeyError, UnicodeDecodeError, ...)."""
    import io
    import random

    buffer = io.BytesIO()
    torch.save(SmallCNN(1, 8, 10).state_dict(), buffer)
    good = buffer.getvalue()
    rng = random.Random(0)
    payloads = [bytes(rng.getrandbits(8) for _ in range(3000)) for _ in range(40)]
    payloads += [good[:cut] for cut in (10, 100, len(good) // 2, len(good) - 1)]
    for _ in range(10):
        flipped = bytearray(good)
        for _ in range(20):
            flipped[rng.randrange(len(flipped))] ^= 0xFF
        payloads.append(bytes(flipped))
    payloads += [b"\x80\x02", b"\x80\x02]q\x00(", b"\x80\x04\x95", b"", b"\x00" * 64]
    return payloads


def test_any_garbled_file_is_refused_with_one_error_type(tmp_path):
    path = tmp_path / "damaged.pt"
    for index, payload in enumerate(_garbled_payloads()):
        path.write_bytes(payload)
        try:
            state = load_state_dict(path)
        except UnsafeModelFileError as exc:
            assert "refusing to load" in str(exc) and "\n" not in str(exc), (index, str(exc))
        else:  # a few flipped bytes inside tensor data still load: they must load as tensors
            assert all(isinstance(v, torch.Tensor) for v in state.values()), index


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
