"""Faults lose nothing (issue 17): stores shared by several processes, copied or moved stores, and
damaged cached victims. Real ``bdtool`` processes on temporary sqlite stores (never the session
store: these tests change the process-wide MLflow URI only in their subprocesses)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bdtool.core.tracking import KIND_TAG, VICTIM_HASH_TAG
from bdtool.core.tracking.tags import DAMAGED_TAG, STATE_DICT_DIGEST_TAG
from bdtool.core.tracking.locations import local_artifact_dir

ROOT = Path(__file__).resolve().parents[1]


def train_command(store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bdtool.cli", "train", "--tracking-uri", f"sqlite:///{store}/mlflow.db",
            "--epochs", "2", *extra]


def bdtool_train(store: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(store, *extra), capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})


def victim_runs(store: Path) -> list:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(ids, filter_string=f"tags.`{KIND_TAG}` = 'victim'",
                              order_by=["attributes.start_time DESC"])


def state_dict_file(store: Path, run_id: str) -> Path:
    path = store / "artifacts" / run_id / "artifacts" / "model" / "state_dict.pt"
    assert path.is_file(), path
    return path


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store holding one victim (digits, 2 epochs), used where it was made."""
    folder = tmp_path_factory.mktemp("shared") / "store"
    result = bdtool_train(folder, "--json")
    assert result.returncode == 0, result.stderr
    return folder


def current_victim(store: Path):
    runs = [r for r in victim_runs(store) if r.info.status == "FINISHED" and DAMAGED_TAG not in r.data.tags
            and VICTIM_HASH_TAG in r.data.tags]
    assert runs
    return runs[0]


def test_two_processes_on_a_new_store_both_succeed_and_train_once(tmp_path):
    new = tmp_path / "new"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [subprocess.Popen(train_command(new, "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "OperationalError" not in err
    results = [json.loads(out) for out, _ in outputs]
    assert sorted(r["reused"] for r in results) == [False, True]  # trained once, found once
    runs = victim_runs(new)
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags[VICTIM_HASH_TAG] == results[0]["victim_hash"]
    assert {r["run_id"] for r in results} == {runs[0].info.run_id}
    assert STATE_DICT_DIGEST_TAG in runs[0].data.tags


def test_a_copied_store_reuses_its_victim_and_leaves_the_original_alone(store, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    before = listing(store)
    result = bdtool_train(copy, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["reused"] is True
    # Logging a new run would still write into the original folder: refused, in one line.
    again = bdtool_train(copy, "--retrain")
    assert again.returncode != 0
    error = again.stderr.strip().splitlines()
    assert len(error) == 1 and f"copied or moved from {store.resolve()}" in error[0] and "--experiment" in error[0]
    assert listing(store) == before


def test_a_moved_store_loads_its_victim_from_the_new_place(store, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(store, moved)
    run = current_victim(moved)
    found = local_artifact_dir(run.info.artifact_uri, run.info.run_id, f"sqlite:///{moved}/mlflow.db")
    assert found == (moved / "artifacts" / run.info.run_id / "artifacts").resolve()


def test_a_truncated_cached_victim_is_reported_and_trained_again(store):
    run = current_victim(store)
    path = state_dict_file(store, run.info.run_id)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    result = bdtool_train(store)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "is damaged" in line]
    assert lines == [f"cached victim {run.data.tags[VICTIM_HASH_TAG]} (run {run.info.run_id}) is damaged: "
                     "model/state_dict.pt differs from the SHA-256 digest recorded when it was logged; training it again"]
    assert "Traceback" not in result.stderr
    assert "trained in" in result.stdout
    runs = {r.info.run_id: r for r in victim_runs(store)}
    assert DAMAGED_TAG in runs[run.info.run_id].data.tags
    assert current_victim(store).info.run_id != run.info.run_id


def test_a_deleted_cached_victim_is_reported_and_trained_again(store):
    run = current_victim(store)
    state_dict_file(store, run.info.run_id).unlink()
    result = bdtool_train(store, "--json")
    assert result.returncode == 0, result.stderr
    damaged = [line for line in result.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and f"(run {run.info.run_id}) is damaged: model/state_dict.pt is missing" in damaged[0]
    assert json.loads(result.stdout)["reused"] is False
    runs = {r.info.run_id: r for r in victim_runs(store)}
    assert DAMAGED_TAG in runs[run.info.run_id].data.tags


def test_an_old_victim_without_a_digest_is_still_verified_by_loading_it(store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
    run = current_victim(store)
    client.delete_tag(run.info.run_id, STATE_DICT_DIGEST_TAG)  # as logged by an older bdtool
    result = bdtool_train(store, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["reused"] is True
    state_dict_file(store, run.info.run_id).write_bytes(random.Random(7).randbytes(3000))  # garbled (seeded: reproducible)
    result = bdtool_train(store, "--json")
    assert result.returncode == 0, result.stderr
    damaged = [line for line in result.stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and "model/state_dict.pt does not load" in damaged[0], result.stderr
    assert json.loads(result.stdout)["reused"] is False
