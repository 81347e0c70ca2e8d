"""Executors and resume (docs/scale-out.md): the Ray executor on a local instance limited to this
machine's cores gives the local executor's numbers and MLflow layout; a failing task or a dying
worker marks only its run FAILED; a resumed comparison runs only what it does not have FINISHED."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bdtool import api
from bdtool.cli.main import main
from bdtool.core.experiment.executor import LocalExecutor
from bdtool.core.tracking.tags import COMPARISON_KEY_TAG
from bdtool.core.experiment.rows import parse_rows
from bdtool.core.experiment.runner import CompareConfig, run_comparison
from bdtool.core.experiment.victim_spec import VictimSpec
from bdtool.core.interfaces import Knowledge

ray = pytest.importorskip("ray", reason="the Ray executor's tests need ray (pip install 'bdtool[ray]')")


class Explodes(api.Defense):
    # Not conftest's double: a Ray worker unpickles this class by reference, and it can import
    # this test module but not conftest.
    name = "test-exec-explode"
    label = "Explode"

    def apply(self, model, ctx):
        raise RuntimeError("boom")


class DiesInItsWorker(api.Defense):
    name = "test-exec-die"
    label = "Die"

    def apply(self, model, ctx):
        os._exit(3)  # the worker process dies: no Python exception, no run ending


class FailsWhileFlagged(api.Defense):
    """Fails while ``FailsWhileFlagged.failing`` is true: a fault that a later try no longer has."""

    name = "test-exec-flaky"
    label = "Flaky"
    failing = True
    calls = 0

    def apply(self, model, ctx):
        type(self).calls += 1
        if type(self).failing:
            raise RuntimeError("transient")
        return model


class StopsOnItsSecondRun(api.Defense):
    """Raises KeyboardInterrupt (as Ctrl-C would) on its second run, once."""

    name = "test-exec-stop"
    label = "Stop"
    calls = 0
    armed = True

    def apply(self, model, ctx):
        type(self).calls += 1
        if type(self).armed and type(self).calls == 2:
            raise KeyboardInterrupt
        return model


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module, limited to this machine's cores (2 in CI); the test
    module is pickled by value so its defenses reach the workers."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=min(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Same numbers need the same number of torch threads (a float reduction's order depends on
    it): the Ray tasks ask for 1 core and use 1 thread, so the local run here uses 1 too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ray_executor():
    from bdtool.core.experiment.ray_executor import RayExecutor
    from bdtool.plugins import get_registries

    return RayExecutor(get_registries)


def _config(run_env, texts, samples=(5,), seeds=2, **kw):
    rows = parse_rows(list(texts), Knowledge.TRIGGER, run_env.registries)
    return CompareConfig(spec=VictimSpec(), rows=rows, samples=list(samples), seeds=seeds, log_models=False, **kw)


def _children(uri, parent_id):
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                              max_results=1000)


def _numbers(result):
    return [(o.label, o.n, o.seed, o.status, {k: v for k, v in o.metrics.items() if not math.isnan(v)})
            for o in result.outcomes]


@pytest.mark.slow
def test_ray_gives_the_local_numbers_and_the_same_runs(local_ray, run_env, digits_victim, one_thread):
    texts = ["suppress-target", "ours", "basicft"]
    local = run_comparison(_config(run_env, texts), run_env, LocalExecutor())
    distributed = run_comparison(_config(run_env, texts), run_env, _ray_executor())
    assert _numbers(distributed) == _numbers(local)
    assert len(distributed.outcomes) == 6 and all(o.status == "FINISHED" for o in distributed.outcomes)
    uri = run_env.tracking_uri
    for result, executor in ((local, "local"), (distributed, "ray")):
        children = _children(uri, result.parent_run_id)
        assert sorted((r.data.tags["bdtool.row"], r.data.params["seed"]) for r in children) == \
            sorted((o.label, str(o.seed)) for o in result.outcomes)
        assert {r.info.status for r in children} == {"FINISHED"}
        parent = MlflowClient(tracking_uri=uri).get_run(result.parent_run_id)
        assert parent.info.status == "FINISHED" and parent.data.tags["bdtool.executor"] == executor
    # the victim is trained once and handed to every task: no victim run is created by either
    assert distributed.victim.run_id == local.victim.run_id == digits_victim.run_id


@pytest.mark.slow
def test_a_failing_task_or_a_dying_worker_fails_only_its_run(local_ray, run_env, digits_victim, register_defense):
    for cls in (Explodes, DiesInItsWorker):
        register_defense(cls)
    config = _config(run_env, [Explodes.name, DiesInItsWorker.name, "suppress-target"], seeds=1)
    result = run_comparison(config, run_env, _ray_executor())
    status = {o.defense: o.status for o in result.outcomes}
    assert status == {Explodes.name: "FAILED", DiesInItsWorker.name: "FAILED", "suppress-target": "FINISHED"}
    errors = {o.defense: o.error for o in result.outcomes}
    assert "boom" in errors[Explodes.name]
    assert "Worker" in errors[DiesInItsWorker.name] or "died" in errors[DiesInItsWorker.name].lower()
    runs = {r.data.tags["bdtool.defense"]: r for r in _children(run_env.tracking_uri, result.parent_run_id)}
    assert runs[Explodes.name].info.status == "FAILED" and runs[DiesInItsWorker.name].info.status == "FAILED"
    assert runs["suppress-target"].info.status == "FINISHED"
    assert "bdtool.error" in runs[DiesInItsWorker.name].data.tags  # ended by the driver, with why
    parent = MlflowClient(tracking_uri=run_env.tracking_uri).get_run(result.parent_run_id)
    assert parent.info.status == "FAILED"


def test_resume_runs_only_what_is_not_finished(run_env, digits_victim, register_defense):
    register_defense(FailsWhileFlagged)
    FailsWhileFlagged.failing, FailsWhileFlagged.calls = True, 0
    texts = ["suppress-target", FailsWhileFlagged.name]
    first = run_comparison(_config(run_env, texts, seeds=3), run_env)
    assert [o.status for o in first.outcomes] == ["FINISHED"] * 3 + ["FAILED"] * 3
    FailsWhileFlagged.failing, FailsWhileFlagged.calls = False, 0
    second = run_comparison(_config(run_env, texts, seeds=3, resume=first.parent_run_id), run_env)
    assert second.parent_run_id == first.parent_run_id and second.resumed == 3
    assert FailsWhileFlagged.calls == 3  # only the three failed runs ran again
    assert [o.status for o in second.outcomes] == ["FINISHED"] * 6
    assert [o.run_id for o in second.outcomes[:3]] == [o.run_id for o in first.outcomes[:3]]
    assert _numbers(second)[:3] == _numbers(first)[:3]
    client = MlflowClient(tracking_uri=run_env.tracking_uri)
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and "bdtool.error" not in parent.data.tags
    assert parent.data.metrics["runs_resumed"] == 3 and parent.data.metrics["runs_ran"] == 3
    children = _children(run_env.tracking_uri, first.parent_run_id)
    assert sorted(r.info.status for r in children) == ["FAILED"] * 3 + ["FINISHED"] * 6  # the failed try is kept


def test_a_stopped_comparison_resumed_with_auto_loses_only_the_run_in_flight(run_env, digits_victim,
                                                                             register_defense):
    register_defense(StopsOnItsSecondRun)
    StopsOnItsSecondRun.calls, StopsOnItsSecondRun.armed = 0, True
    texts = ["suppress-target", StopsOnItsSecondRun.name]
    with pytest.raises(KeyboardInterrupt):
        run_comparison(_config(run_env, texts, seeds=3), run_env)
    client = MlflowClient(tracking_uri=run_env.tracking_uri)
    experiment = client.get_experiment_by_name(run_env.experiment)
    stopped = client.search_runs([experiment.experiment_id], filter_string="tags.`bdtool.kind` = 'comparison'",
                                 order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert stopped.info.status == "KILLED"
    statuses = sorted(r.info.status for r in _children(run_env.tracking_uri, stopped.info.run_id))
    assert statuses == ["FINISHED"] * 4 + ["KILLED"]  # 3 null rows and Stop's first; the second was in flight
    StopsOnItsSecondRun.calls, StopsOnItsSecondRun.armed = 0, False
    resumed = run_comparison(_config(run_env, texts, seeds=3, resume="auto"), run_env)
    assert resumed.parent_run_id == stopped.info.run_id and resumed.resumed == 4
    assert StopsOnItsSecondRun.calls == 2 and all(o.status == "FINISHED" for o in resumed.outcomes)


def test_resume_refuses_a_run_that_is_not_the_same_comparison(run_env, digits_victim, mlflow_store):
    first = run_comparison(_config(run_env, ["suppress-target"], seeds=1), run_env)
    cases = {
        "no-such-run-id": "no such run",
        digits_victim.run_id: "not a comparison",
    }
    for resume, message in cases.items():
        with pytest.raises(api.BdtoolError, match=message):
            run_comparison(_config(run_env, ["suppress-target"], seeds=1, resume=resume), run_env)
    with pytest.raises(api.BdtoolError, match="same options"):
        run_comparison(_config(run_env, ["suppress-target"], seeds=2, resume=first.parent_run_id), run_env)
    key = MlflowClient(tracking_uri=mlflow_store).get_run(first.parent_run_id).data.tags[COMPARISON_KEY_TAG]
    assert len(key) == 16


def test_cli_resume_says_what_it_kept_and_ray_options_need_ray(mlflow_store, digits_victim):
    args = ["compare", "--device", "cpu", "--tracking-uri", mlflow_store, "--experiment", "cli-resume",
            "--defense", "suppress-target", "--samples", "5", "--seeds", "2", "--no-log-models"]
    first = CliRunner().invoke(main, args + ["--json"])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(main, args + ["--resume", "auto"])
    assert again.exit_code == 0, again.output
    assert "resumed: 2 of 2 runs taken FINISHED from the store, 0 run now" in again.output
    refused = CliRunner().invoke(main, args + ["--gpus-per-task", "0.5"])
    assert refused.exit_code == 2 and "need --executor ray" in refused.output


@pytest.mark.slow
def test_a_signal_cancels_the_ray_tasks_and_ends_their_runs_killed(mlflow_store, digits_victim, tmp_path):
    import signal
    import subprocess

    from test_lifecycle import wait_for_running_defense

    experiment = "ray-signal"
    cmd = [sys.executable, "-m", "bdtool.cli", "compare", "--executor", "ray", "--defense", "basicft", "--samples",
           "50", "--seeds", "3", "--no-log-models", "--device", "cpu", "--tracking-uri", mlflow_store,
           "--experiment", experiment]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=tmp_path)
    client = MlflowClient(tracking_uri=mlflow_store)
    try:
        wait_for_running_defense(proc, mlflow_store, experiment, timeout=240)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "Score" not in out
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=100)
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("bdtool.kind") == "comparison"]
    assert parent.info.status == "KILLED" and parent.data.tags["bdtool.executor"] == "ray"
    assert "KILLED" in {r.info.status for r in runs if r.data.tags.get("bdtool.kind") == "defense"}
