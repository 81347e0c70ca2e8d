"""Faults lose nothing (issue 17): ``--output`` and the tracking store are checked before any data
is loaded, model trained or run created, each failure one line naming the path and the fix; the
summary is published file by file, atomically, never changing the mode of an existing folder nor
writing through a symlink; a summary that cannot be logged fails the comparison in one line.

We run as root here and in CI, and root ignores permission bits: the read-only cases use
``chattr +i`` (immutable, which binds root too) when running as root and skip where it is not
available; as another user they use ``chmod``."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bdtool.cli import main
from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.output import prepare_output_dir, publish, write_text_atomic
from bdtool.core.tracking.checks import check_store

COMPARE = ["compare", "--defense", "ours", "--samples", "5", "--seeds", "1", "--no-log-models", "--device", "cpu"]


def all_runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=5000) if ids else []


def compare(uri: str, *args: str, experiment: str | None = None):
    return CliRunner().invoke(main, [*COMPARE, "--tracking-uri", uri, "--experiment",
                                     experiment or f"preflight-{uuid.uuid4().hex[:8]}", *args])


def assert_one_line(result, *needles: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def store(mlflow_store, digits_victim):
    """The session store (victim cached); yields it and checks that no run was created."""
    before = len(all_runs(mlflow_store))
    yield mlflow_store
    assert len(all_runs(mlflow_store)) == before, "a refused command created a run"


@contextmanager
def read_only(path: Path):
    """``path`` made unwritable, for root too (chattr +i), else skip the test."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("running as root (permission bits do not bind root) and chattr +i is not available")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


# --- --output ----------------------------------------------------------------------------------

def test_output_under_a_file_is_one_line_before_any_run(store, tmp_path):
    (tmp_path / "afile").write_text("x")
    result = compare(store, "--output", str(tmp_path / "afile" / "sub"))
    assert_one_line(result, str(tmp_path / "afile" / "sub"), "is a file", "choose another --output")


def test_output_that_is_a_file_is_a_usage_error(store, tmp_path):
    (tmp_path / "afile").write_text("x")
    result = compare(store, "--output", str(tmp_path / "afile"))  # click's own check (file_okay=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is a file" in result.stderr.strip().splitlines()[-1]
    from bdtool.core.experiment.output import prepare_output_dir

    with pytest.raises(BdtoolError, match="is a file, not a folder"):
        prepare_output_dir(tmp_path / "afile")


def test_output_name_too_long_is_one_line(store, tmp_path):
    out = tmp_path / ("x" * 300)
    assert_one_line(compare(store, "--output", str(out)), str(out), "too long", "choose another --output")


def test_output_under_a_read_only_folder_is_one_line(store, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent):
        result = compare(store, "--output", str(parent / "out"))
    assert_one_line(result, str(parent / "out"), "choose another --output")
    assert not (parent / "out").exists()


def test_existing_output_that_is_read_only_is_one_line(store, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with read_only(out):
        result = compare(store, "--output", str(out))
    assert_one_line(result, str(out), "cannot write files there")
    assert list(out.iterdir()) == []  # the probe file is gone


def test_show_and_sweep_check_output_first(store, tmp_path):
    (tmp_path / "afile").write_text("x")
    bad = str(tmp_path / "afile" / "sub")
    shown = CliRunner().invoke(main, ["show", "--tracking-uri", store, "--output", bad])
    assert_one_line(shown, bad, "is a file")
    swept = CliRunner().invoke(main, ["sweep", "table9", "--device", "cpu", "--tracking-uri", store,
                                      "--experiment", "preflight-sweep", "--output", bad])
    assert_one_line(swept, bad, "is a file")


def test_prepare_output_dir_creates_with_the_umask_and_leaves_existing_modes(tmp_path):
    made = prepare_output_dir(tmp_path / "a" / "b")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(made.stat().st_mode) == 0o777 & ~umask
    existing = tmp_path / "shared"
    existing.mkdir()
    existing.chmod(0o2775)
    assert prepare_output_dir(existing) == existing
    assert stat.S_IMODE(existing.stat().st_mode) == 0o2775
    assert list(existing.iterdir()) == []


# --- publishing: modes, atomic files, symlinks ----------------------------------------------------

def test_publish_keeps_an_existing_folder_mode_unlike_copytree(tmp_path):
    """The cause of the 0700 --output: copytree(dirs_exist_ok=True) copies the source folder's mode
    (a TemporaryDirectory is 0700) onto the existing destination. publish does not."""
    import shutil
    import tempfile

    for copy in (shutil.copytree, publish):
        dest = tmp_path / copy.__name__
        dest.mkdir()
        dest.chmod(0o2775)
        with tempfile.TemporaryDirectory() as src:
            (Path(src) / "summary.md").write_text("table")
            if copy is shutil.copytree:
                copy(src, dest, dirs_exist_ok=True)
            else:
                copy(src, dest)
        mode = stat.S_IMODE(dest.stat().st_mode)
        assert (mode == 0o2775) == (copy is publish), (copy.__name__, oct(mode))


def test_write_text_atomic_replaces_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "elsewhere.md"
    target.write_text("keep me")
    link = tmp_path / "summary.md"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert target.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.md", "summary.md"]  # no temp left


def test_write_text_atomic_keeps_the_old_file_on_failure_and_its_mode(tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("old")
    path.chmod(0o640)

    with pytest.raises(TypeError):
        write_text_atomic(path, 42)  # type: ignore[arg-type]  (fails mid-write)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_compare_keeps_output_mode_and_never_writes_through_a_symlink(store, tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(0o2775)
    target = tmp_path / "precious.md"
    target.write_text("not yours")
    (out / "summary.md").symlink_to(target)
    before = os.stat(out)
    experiment = f"preflight-{uuid.uuid4().hex[:8]}"
    result = compare(store, "--output", str(out), experiment=experiment)
    assert result.exit_code == 0, result.output
    after = os.stat(out)
    assert stat.S_IMODE(after.st_mode) == stat.S_IMODE(before.st_mode) == 0o2775
    assert target.read_text() == "not yours"
    assert not (out / "summary.md").is_symlink() and "| Method |" in (out / "summary.md").read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "summary.json").stat().st_mode) == 0o666 & ~umask
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 2  # parent + one nested run
    for run in runs:  # the `store` fixture counts runs: this test's are deleted
        client.delete_run(run.info.run_id)


# --- tracking store ------------------------------------------------------------------------------

def test_unknown_scheme_is_one_line(store):
    assert_one_line(compare("ftp://example.org/store"), "unknown scheme 'ftp://'", "sqlite:///PATH")


def test_file_store_is_refused_with_the_sqlite_uri_to_use(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in (f"file://{tmp_path}/fs", str(tmp_path / "fs")):
        assert_one_line(compare(uri), uri, f"sqlite:///{tmp_path}/fs/mlflow.db")
    assert not (tmp_path / "fs").exists()


def test_unreachable_server_fails_fast_in_one_line(store, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    start = time.monotonic()
    result = compare(uri)
    assert time.monotonic() - start < 10
    assert_one_line(result, f"cannot reach the tracking server at {uri}", "start it or fix --tracking-uri")


def test_train_checks_the_store_first(store):
    result = CliRunner().invoke(main, ["train", "--device", "cpu", "--tracking-uri", "ftp://x/y"])
    assert_one_line(result, "unknown scheme")


def test_sqlite_store_in_a_read_only_folder_is_one_line(store, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    uri = f"sqlite:///{folder}/sub/mlflow.db"
    with read_only(folder):
        result = compare(uri)
    assert_one_line(result, uri, str(folder / "sub"))


def test_read_only_sqlite_database_is_one_line(store, tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    with read_only(db):
        with pytest.raises(BdtoolError, match="read-only"):
            check_store(f"sqlite:///{db}")


def test_read_only_artifact_folder_is_refused_before_work(store, tmp_path):
    (tmp_path / "artifacts").mkdir()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with read_only(tmp_path / "artifacts"):
        result = compare(uri)
    assert_one_line(result, str(tmp_path / "artifacts"), "not writable")


def test_summary_that_cannot_be_logged_fails_the_comparison_in_one_line(store, monkeypatch, tmp_path):
    """The artifact folder becomes unwritable during the comparison: the parent run must not be
    recorded FINISHED without a summary, and the error is one line naming the folder."""
    import mlflow

    folder = tmp_path / "artifacts" / "summary"

    def refuse(local_dir, artifact_path=None, run_id=None):
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(mlflow, "log_artifacts", refuse)
    experiment = f"preflight-{uuid.uuid4().hex[:8]}"
    runs = len(all_runs(store))
    result = compare(store, "--json", experiment=experiment)  # --json: no progress lines on stderr
    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name(experiment)
    made = client.search_runs([exp.experiment_id])
    for run in made:  # keep the `store` fixture's count
        client.delete_run(run.info.run_id)
    assert_one_line(result, str(folder), "cannot log the summary")
    assert [r.info.status for r in made if r.data.tags.get("bdtool.kind") == "comparison"] == ["FAILED"]
    assert len(all_runs(store)) == runs


@pytest.mark.parametrize("inside", ["artifacts", "artifacts/0/abc/artifacts/report", "locks"])
def test_output_inside_the_stores_own_folders_is_refused_in_one_line(tmp_path, inside):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(main, ["compare", "--device", "cpu", "--tracking-uri", store, "--output",
                                       str(tmp_path / inside)])
    assert result.exit_code != 0 and "inside the tracking store's own folder" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "artifacts" / "0").exists()  # refused before anything was written there
