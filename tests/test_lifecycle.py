"""Faults lose nothing: signals end every run KILLED with exit 128 + N, runs left RUNNING by a
killed process are marked KILLED by the next command, a comparison is FINISHED only when every
run ran (exit 0 / 3 / 1), and ``bdtool ui`` refuses a bad port in one line.

The signal and orphan tests start real ``bdtool compare`` processes on the session store (its
digits victim is reused), each in an experiment of its own."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import conftest
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bdtool.cli import main
from bdtool.core.interfaces import Defense

INTERRUPTED = "interrupted by {}: open MLflow runs were marked KILLED"
ORPHANS = re.compile(r"^marked (\d+) run\(s\) KILLED whose process is gone \(left by a killed bdtool\)$", re.M)


def experiment_name(request) -> str:
    return "life-" + re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)


def runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def start_compare(uri: str, experiment: str, ignore_sigint: bool = False) -> subprocess.Popen:
    """A real ``bdtool compare`` in a session of its own (as a shell's background job would be,
    with SIGINT ignored when ``ignore_sigint``)."""
    cmd = [sys.executable, "-m", "bdtool.cli", "compare", "--defense", "basicft", "--samples", "50", "--seeds", "3",
           "--no-log-models", "--device", "cpu", "--tracking-uri", uri, "--experiment", experiment]
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=preexec)


def wait_for_running_defense(proc: subprocess.Popen, uri: str, experiment: str, timeout: float = 120.0) -> None:
    client = MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"compare ended early ({proc.returncode}): {proc.communicate()[1]}"
        exp = client.get_experiment_by_name(experiment)
        if exp is not None and client.search_runs(
                [exp.experiment_id], "tags.`bdtool.kind` = 'defense' and attributes.status = 'RUNNING'"):
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no defense run became RUNNING in time")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_ends_every_run_killed_and_exits_128_plus_n(mlflow_store, digits_victim, request, signum):
    experiment = experiment_name(request)
    # SIGINT: started as a background job is, with SIGINT ignored; `kill -INT` must still work.
    proc = start_compare(mlflow_store, experiment, ignore_sigint=signum == signal.SIGINT)
    try:
        wait_for_running_defense(proc, mlflow_store, experiment)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == INTERRUPTED.format(signum.name)
    assert "Traceback" not in err and "Score" not in out
    runs = runs_of(mlflow_store, experiment)
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("bdtool.kind") == "comparison"]
    assert parent.info.status == "KILLED"
    assert "KILLED" in {r.info.status for r in runs if r.data.tags.get("bdtool.kind") == "defense"}
    assert parent.data.tags["bdtool.host"] == socket.gethostname() and parent.data.tags["bdtool.pid"] == str(proc.pid)


def test_runs_of_a_killed_process_are_marked_killed_by_the_next_command(mlflow_store, digits_victim, request):
    experiment = experiment_name(request)
    proc = start_compare(mlflow_store, experiment)
    try:
        wait_for_running_defense(proc, mlflow_store, experiment)
        os.killpg(proc.pid, signal.SIGKILL)  # nothing can be ended: the runs stay RUNNING
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = [r for r in runs_of(mlflow_store, experiment) if r.info.status == "RUNNING"]
    assert {r.data.tags["bdtool.kind"] for r in left} == {"comparison", "defense"}

    # The next command that opens the store (here `bdtool train`, which reuses the victim).
    result = CliRunner().invoke(main, ["train", "--json", "--device", "cpu", "--tracking-uri", mlflow_store,
                                       "--experiment", "tests"])
    assert result.exit_code == 0, result.output
    (line,) = [line for line in result.stderr.splitlines() if "whose process is gone" in line]
    assert int(ORPHANS.match(line).group(1)) >= len(left)
    client = MlflowClient(tracking_uri=mlflow_store)
    for run in (client.get_run(r.info.run_id) for r in left):
        assert run.info.status == "KILLED"
        assert run.data.tags["bdtool.orphaned"] == f"process {proc.pid} on {socket.gethostname()} is gone"


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_mark_orphans_leaves_live_processes_and_other_hosts_alone(mlflow_store, digits_victim):
    from bdtool.core.tracking.orphans import mark_orphans, process_exists

    client = MlflowClient(tracking_uri=mlflow_store)
    exp = client.get_experiment_by_name("tests").experiment_id
    host, gone = socket.gethostname(), dead_pid()
    assert not process_exists(gone) and process_exists(os.getpid()) and process_exists(1)
    made = {name: client.create_run(exp, tags={"bdtool.host": h, "bdtool.pid": str(pid)}).info.run_id
            for name, h, pid in [("gone", host, gone), ("alive", host, os.getpid()), ("init", host, 1),
                                 ("elsewhere", "elsewhere.invalid", gone)]}
    untagged = client.create_run(exp).info.run_id  # not bdtool's, or an older bdtool's: left alone
    try:
        report = mark_orphans(mlflow_store)
        assert report.killed == [made["gone"]] and report.other_hosts >= 1
        status = {name: client.get_run(run_id).info.status for name, run_id in made.items()}
        assert status == {"gone": "KILLED", "alive": "RUNNING", "init": "RUNNING", "elsewhere": "RUNNING"}
        assert client.get_run(made["gone"]).data.tags["bdtool.orphaned"] == f"process {gone} on {host} is gone"
        assert client.get_run(untagged).info.status == "RUNNING"
    finally:
        for run_id in [*made.values(), untagged]:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "FINISHED")


def test_mark_orphans_does_not_create_a_missing_store(tmp_path):
    from bdtool.core.tracking.orphans import mark_orphans

    assert mark_orphans(f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}").killed == []
    assert not (tmp_path / "none").exists()


def test_standard_tags_say_where_the_run_runs():
    import torch

    from bdtool.core import tracking

    tags = tracking.standard_tags(torch.device("cpu"))
    assert tags[tracking.HOST_TAG] == socket.gethostname() and tags[tracking.PID_TAG] == str(os.getpid())


def test_tracked_run_statuses(mlflow_store):
    import mlflow

    from bdtool.cli.signals import Interrupted
    from bdtool.core import tracking

    tracking.setup_tracking(mlflow_store)
    exp = tracking.ensure_experiment("tests", mlflow_store)
    with tracking.tracked_run(experiment_id=exp) as run:
        raise tracking.RunFailed("2 of 6 runs failed: x")
    failed = mlflow.get_run(run.info.run_id)  # the block's code after the raise is skipped, not the caller's
    assert failed.info.status == "FAILED" and failed.data.tags["bdtool.error"] == "2 of 6 runs failed: x"
    with pytest.raises(Interrupted):
        with tracking.tracked_run(experiment_id=exp) as run:
            raise Interrupted(signal.SIGTERM)
    assert mlflow.get_run(run.info.run_id).info.status == "KILLED"
    assert mlflow.active_run() is None


def test_handlers_are_installed_for_the_command_and_restored_after(mlflow_store):
    from bdtool.cli.signals import Interrupted, raising_interrupted

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell's background job
    try:
        with raising_interrupted():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # nohup is respected
            with pytest.raises(Interrupted) as caught:
                os.kill(os.getpid(), signal.SIGINT)  # handled although inherited ignored
                time.sleep(1)
            assert caught.value.exit_code == 130 and isinstance(caught.value, KeyboardInterrupt)
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal while unwinding is ignored
            time.sleep(0.1)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    result = CliRunner().invoke(main, ["list", "metrics"])
    assert result.exit_code == 0
    assert {s: signal.getsignal(s) for s in before} == before


# Comparison status and exit codes --------------------------------------------------------------


class Fine(conftest.Passes):
    name = "test-life-fine"


class Broken(conftest.Explodes):
    name = "test-life-broken"
    label = "Broken"


@pytest.fixture
def defenses(register_defense):
    for cls in (Fine, Broken):
        register_defense(cls)


def compare(uri: str, experiment: str, *args: str):
    return CliRunner().invoke(main, ["compare", "--device", "cpu", "--samples", "5", "--no-log-models",
                                     "--tracking-uri", uri, "--experiment", experiment, *args])


def parent_of(uri: str, experiment: str):
    (parent,) = [r for r in runs_of(uri, experiment) if r.data.tags.get("bdtool.kind") == "comparison"]
    return parent


def test_all_runs_ran_finished_exit_0(mlflow_store, digits_victim, defenses, request):
    experiment = experiment_name(request)
    result = compare(mlflow_store, experiment, "--defense", "test-life-fine", "--seeds", "1")
    assert result.exit_code == 0, result.output
    parent = parent_of(mlflow_store, experiment)
    assert parent.info.status == "FINISHED" and "bdtool.error" not in parent.data.tags


def test_some_runs_failed_is_failed_with_the_reason_exit_3(mlflow_store, digits_victim, defenses, request, tmp_path):
    experiment = experiment_name(request)
    result = compare(mlflow_store, experiment, "--defense", "test-life-fine", "--defense", "test-life-broken",
                     "--seeds", "2", "--output", str(tmp_path / "out"))
    assert result.exit_code == 3, result.output
    assert "Fine" in result.stdout and "failed" in result.stdout  # the table is still printed
    assert result.stderr.strip().splitlines()[-1] == \
        "2 of 4 runs failed: the comparison run is marked FAILED (exit code 3)"
    parent = parent_of(mlflow_store, experiment)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["bdtool.error"] == \
        "2 of 4 runs failed: Broken (none) n=5 (2 runs): RuntimeError: this defense always fails"
    client = MlflowClient(tracking_uri=mlflow_store)
    assert "summary/summary.json" in {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert (tmp_path / "out" / "summary.md").exists()


def test_every_run_failed_exit_1_and_json_still_printed(mlflow_store, digits_victim, defenses, request):
    experiment = experiment_name(request)
    result = compare(mlflow_store, experiment, "--defense", "test-life-broken", "--seeds", "1", "--json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "FAILED" and data["runs_failed"] == data["runs_total"] == 1
    assert result.stderr.strip().splitlines() == [
        "every row failed: Broken (none) n=5: RuntimeError: this defense always fails"]
    parent = parent_of(mlflow_store, experiment)
    assert parent.info.status == "FAILED" and parent.data.tags["bdtool.error"].startswith("1 of 1 runs failed: ")


def test_sweep_exit_code_is_the_worst_of_its_comparisons():
    from bdtool.cli.compare import exit_code

    ok, some, every = ({"runs_failed": f, "runs_total": 4} for f in (0, 2, 4))
    assert exit_code([ok, ok]) == 0
    assert exit_code([ok, some]) == 3
    assert exit_code([some, every, ok]) == 1


# bdtool ui -------------------------------------------------------------------------------------


def test_ui_port_taken_is_one_line(mlflow_store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["ui", "--port", str(port), "--tracking-uri", mlflow_store])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: port {port} on 127.0.0.1 is not free (Address already in use); pick another with --port"]


def test_ui_port_out_of_range_is_a_usage_error(mlflow_store):
    result = CliRunner().invoke(main, ["ui", "--port", "99999", "--tracking-uri", mlflow_store])
    assert result.exit_code == 2 and "99999 is not in the range 1<=x<=65535" in result.stderr


def test_ui_server_that_exits_early_is_one_line(mlflow_store, monkeypatch):
    import bdtool.cli.ui as ui

    monkeypatch.setattr(ui, "server_command", lambda uri, port: [sys.executable, "-c", "raise SystemExit(3)"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = CliRunner().invoke(main, ["ui", "--port", str(port), "--tracking-uri", mlflow_store])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: the MLflow server (pid ") and "exited on its own with code 3" in line


class _SignalInFinalizer:
    """Delivers ``signum`` to this process while Python runs a finalizer, where the handler's
    ``Interrupted`` is printed as "Exception ignored in ..." and swallowed (as it was in CI, in
    SQLAlchemy's connection-pool callbacks)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
        time.sleep(0.2)  # the handler runs here, inside the finalizer


class SwallowedSignal(Defense):
    """Its first run gets a signal whose raise is swallowed, then fails as a store call on the
    half-used connection would: that run is KILLED, not a failed defense."""
    name = "test-life-swallowed"
    label = "Swallowed"
    first_run_status = "KILLED"

    def apply(self, model, ctx):
        _SignalInFinalizer(signal.SIGTERM)  # collected at once: __del__ runs now
        raise RuntimeError("the store's connection was left half-used")


class SwallowedThenWorks(Defense):
    """The signal's raise is swallowed and the defense goes on as if nothing happened: its run,
    whose work was all done and logged, is FINISHED; the comparison stops after it."""
    name = "test-life-swallowed-ok"
    label = "SwallowedOk"
    first_run_status = "FINISHED"

    def apply(self, model, ctx):
        _SignalInFinalizer(signal.SIGTERM)
        return model


@pytest.mark.parametrize("cls", [SwallowedSignal, SwallowedThenWorks], ids=lambda c: c.label)
def test_a_swallowed_signal_still_stops_the_comparison(mlflow_store, digits_victim, register_defense, request, cls):
    """The stop is recorded as well as raised (core/interrupts.py): an error raised while it is
    pending ends the run KILLED, not as a failed defense, and the next run never starts."""
    register_defense(cls)
    experiment = experiment_name(request)
    result = compare(mlflow_store, experiment, "--defense", cls.name, "--seeds", "3")
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert result.stderr.strip().splitlines()[-1] == INTERRUPTED.format("SIGTERM")
    assert "failed" not in result.stderr
    runs = runs_of(mlflow_store, experiment)
    defense_runs = [r for r in runs if r.data.tags.get("bdtool.kind") == "defense"]
    assert [r.info.status for r in defense_runs] == [cls.first_run_status]  # seeds 1 and 2 never started
    assert parent_of(mlflow_store, experiment).info.status == "KILLED"
    from bdtool.core import interrupts

    assert interrupts.pending() is None  # cleared when the command's handlers are removed
