"""Fault-injection harness for bdtool's fault handling (docs/reliability.md).

Runs each fault of the reliability table against a given ``bdtool`` executable, as real
subprocesses in scratch folders under a temporary directory, and records for each one: the exit
code, the stderr (line count, last lines, whether it holds a traceback), the MLflow runs left
RUNNING in the store, whether stored data stayed intact (a re-run works, no file overwritten
through a symlink, folder modes unchanged, ...) and the wall time.

    python benchmarks/fault_injection.py --bdtool /path/to/bdtool --label before \
        --out benchmarks/results/fault_injection_before.json [--only NAME ...]
    python benchmarks/fault_injection.py --render        # rebuild docs/reliability.md only
    python benchmarks/fault_injection.py --list          # scenario names

The standard each fault is held to: one clear line on stderr, a non-zero exit, no run left
RUNNING, nothing stored lost, and a re-run that works.

Safety: every command runs with its cwd in a scratch folder and an explicit (or scratch-relative
default) tracking URI, MLFLOW_TRACKING_URI is removed from the environment, so the repository's
``mlruns/`` is never touched. Every process started carries a marker environment variable; at the
end of each scenario all processes with that marker (grandchildren such as ``bdtool ui``'s MLflow
server, which runs in its own session, included) are killed by pid, and each started process
group is killed as well. Run as root, bdtool runs under ``setpriv --bounding-set=-all`` so that
read-only folders are read-only to it too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "docs" / "reliability.md"
INPUTS_HEADING = "## Inputs that would be scored wrongly"

COMMON = ["--samples", "5", "--seeds", "1", "--no-log-models", "--experiment", "bdtool"]
FAST_ROW = ["--defense", "ours"]
LONG_ROW = ["--defense", "basicft:epochs=100"]  # ~1.5 s (idle 2 cores) inside one defense run: time to send a signal
FAIL_ROW = ["--defense", "ours:layers=nosuchlayer"]  # parses, fails at run time (DefenseInputError)
DEFAULT_TIMEOUT = 120.0
TRAIN_TIMEOUT = 300.0  # training the victim takes 10-100 s on 2 busy cores


# --------------------------------------------------------------------------------------------
# process handling


class Harness:
    def __init__(self, bdtool: str, root: Path):
        self.bdtool = bdtool
        self.root = root
        self.token = uuid.uuid4().hex
        self.warm: Path | None = None
        self.started_pgids: list[int] = []
        self.prefix: list[str] = []
        if os.geteuid() == 0 and shutil.which("setpriv"):
            # root ignores file modes; without capabilities it does not
            self.prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["BDTOOL_FI_MARKER"] = self.token
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, args: list[str], cwd: Path, name: str, ignore_sigint: bool = False) -> "Proc":
        cwd.mkdir(parents=True, exist_ok=True)
        logdir = self.root / "logs"
        logdir.mkdir(exist_ok=True)
        out = open(logdir / f"{name}.out", "wb")
        err = open(logdir / f"{name}.err", "wb")

        def pre() -> None:
            if ignore_sigint:  # what `cmd &` in a non-interactive shell script does
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        t0 = time.monotonic()
        p = subprocess.Popen([*self.prefix, self.bdtool, *args], cwd=cwd, stdout=out, stderr=err,
                             stdin=subprocess.DEVNULL, env=self.env(), start_new_session=True, preexec_fn=pre)
        self.started_pgids.append(p.pid)
        return Proc(p, t0, logdir / f"{name}.out", logdir / f"{name}.err", args, cwd, out, err)

    def run(self, args: list[str], cwd: Path, name: str, timeout: float = DEFAULT_TIMEOUT,
            send: tuple[int, Callable[["Proc"], bool], float] | None = None,
            ignore_sigint: bool = False) -> dict[str, Any]:
        """Run one command to completion (or ``timeout``); ``send=(sig, ready, wait_max)`` sends
        ``sig`` to the process once ``ready(proc)`` holds (or after ``wait_max`` s regardless)."""
        proc = self.start(args, cwd, name, ignore_sigint)
        if send is not None:
            sig, ready, wait_max = send
            proc.signal_when(sig, ready, wait_max)
        return proc.finish(timeout)

    def cleanup(self) -> list[int]:
        """Kill every process group started and every process carrying the marker; return pids killed."""
        killed = []
        for pgid in self.started_pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.started_pgids.clear()
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"BDTOOL_FI_MARKER={self.token}".encode() in environ:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(int(entry.name))
                except (ProcessLookupError, PermissionError):
                    pass
        if killed:
            time.sleep(0.3)
        return killed


class Proc:
    def __init__(self, p: subprocess.Popen, t0: float, out: Path, err: Path, args: list[str], cwd: Path, fo, fe):
        self.p, self.t0, self.out, self.err, self.args, self.cwd = p, t0, out, err, args, cwd
        self._files = (fo, fe)
        self.signal_info: dict[str, Any] | None = None

    def stderr_text(self) -> str:
        return self.err.read_bytes().decode("utf-8", "replace")

    def signal_when(self, sig: int, ready: Callable[["Proc"], bool], wait_max: float) -> None:
        deadline = time.monotonic() + wait_max
        seen = False
        while time.monotonic() < deadline and self.p.poll() is None:
            try:
                if ready(self):
                    seen = True
                    break
            except Exception:  # noqa: BLE001 - store not there yet, locked, ...
                pass
            time.sleep(0.1)
        info = {"signal": signal.Signals(sig).name, "ready_seen": seen,
                "at_s": round(time.monotonic() - self.t0, 2), "already_exited": self.p.poll() is not None}
        if self.p.poll() is None:
            time.sleep(0.3)  # a little way into it
            os.kill(self.p.pid, sig)
        self.signal_info = info

    def finish(self, timeout: float) -> dict[str, Any]:
        remaining = max(0.0, timeout - (time.monotonic() - self.t0))
        hung = False
        try:
            rc = self.p.wait(remaining)
        except subprocess.TimeoutExpired:
            hung = True
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = self.p.wait()
        wall = time.monotonic() - self.t0
        for f in self._files:
            f.close()
        return describe(self, rc, wall, hung, timeout)


def lines_of(text: str) -> list[str]:
    """Lines as a terminal shows them: a progress bar redrawn with \\r counts once."""
    out = []
    for raw in text.splitlines():
        seg = raw.split("\r")[-1].rstrip()
        if seg.strip():
            out.append(seg)
    return out


def describe(proc: Proc, rc: int, wall: float, hung: bool, timeout: float) -> dict[str, Any]:
    err = proc.stderr_text()
    out = proc.out.read_bytes().decode("utf-8", "replace")
    err_lines = lines_of(err)
    return {
        "cmd": "bdtool " + " ".join(proc.args), "cwd": str(proc.cwd),
        # a death by signal N is shown as a shell shows it: 128 + N
        "exit": 128 - rc if rc < 0 else rc, "died_of_signal": -rc if rc < 0 else None, "signal": proc.signal_info, "hung": hung, "timeout_s": timeout,
        "wall_s": round(wall, 2),
        "stderr_lines": len(err_lines), "stderr_tail": err_lines[-5:],
        "traceback": "Traceback" in err,
        "stdout_lines": len(lines_of(out)), "stdout_tail": lines_of(out)[-3:],
        "_stderr": err, "_stdout": out,
    }


# --------------------------------------------------------------------------------------------
# store helpers


def sqlite_uri(db: Path) -> str:
    return f"sqlite:///{db}"


def ro_query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read the sqlite store without creating or migrating anything."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def kind_running(db: Path, *kinds: str) -> bool:
    q = ("select count(*) from runs r join tags t on t.run_uuid = r.run_uuid where t.key = 'bdtool.kind' "
         f"and t.value in ({','.join('?' * len(kinds))}) and r.status = 'RUNNING'")
    return ro_query(db, q, kinds)[0][0] > 0


def runs_by_kind(db: Path) -> list[tuple[str, str, str]]:
    """(run id, kind, status) of every run."""
    q = ("select r.run_uuid, coalesce(t.value, '?'), r.status from runs r left join tags t "
         "on t.run_uuid = r.run_uuid and t.key = 'bdtool.kind'")
    try:
        return ro_query(db, q)
    except sqlite3.Error:
        return []


def running_runs(uri: str) -> dict[str, Any]:
    """Runs left RUNNING, via MlflowClient.search_runs over all experiments (run_view_type ALL)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return {"count": 0, "runs": [], "note": "no store created"}
    if uri.startswith("file://") and not Path(uri[len("file://"):]).exists():
        return {"count": 0, "runs": [], "note": "no store created"}
    try:
        from mlflow.entities import ViewType
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        runs = client.search_runs(exps, run_view_type=ViewType.ALL, max_results=5000) if exps else []
        left = [{"run_id": r.info.run_id, "kind": r.data.tags.get("bdtool.kind", "?"),
                 "name": r.data.tags.get("mlflow.runName", "")} for r in runs if r.info.status == "RUNNING"]
        return {"count": len(left), "runs": left}
    except Exception as e:  # noqa: BLE001
        return {"count": None, "runs": [], "note": f"store not readable: {type(e).__name__}: {str(e)[:160]}"}


def clone_store(src: Path, dst: Path) -> Path:
    """A self-contained copy of a warmed sqlite store: artifact paths rewritten to the copy, so a
    scenario never writes into the warm store. Returns the db path."""
    shutil.copytree(src, dst)
    db = dst / "mlflow.db"
    old, new = src.resolve().as_uri(), dst.resolve().as_uri()
    con = sqlite3.connect(db)
    with con:
        for table, col in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                           ("logged_models", "artifact_location")):
            con.execute(f"update {table} set {col} = replace({col}, ?, ?)", (old, new))
    con.close()
    return db


def victim_state_dicts(store: Path) -> list[Path]:
    return sorted(store.glob("artifacts/*/artifacts/model/state_dict.pt"))


def files_under(p: Path) -> set[str]:
    return {str(f.relative_to(p)) for f in p.rglob("*") if f.is_file()} if p.exists() else set()


def mode_of(p: Path) -> str:
    return oct(stat.S_IMODE(p.stat().st_mode))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------------------------
# scenarios

SCENARIOS: dict[str, dict[str, Any]] = {}


def scenario(name: str, fault: str, warm: bool = True):
    def deco(fn):
        SCENARIOS[name] = {"fn": fn, "fault": fault, "warm": warm}
        return fn
    return deco


def compare_args(db_or_uri: Path | str, row: list[str], *extra: str) -> list[str]:
    uri = db_or_uri if isinstance(db_or_uri, str) else sqlite_uri(db_or_uri)
    return ["compare", *row, *COMMON, "--tracking-uri", uri, *extra]


def rerun_check(h: Harness, d: Path, db: Path, args: list[str], name: str) -> dict[str, Any]:
    r = h.run(args, d / "work", name)
    return {"rerun_exit": r["exit"], "rerun_traceback": r["traceback"], "rerun": strip(r)}


def signal_scenario(h: Harness, d: Path, sig: int, name: str, ignore_sigint: bool = False) -> dict[str, Any]:
    db = clone_store(h.warm, d / "store")
    args = compare_args(db, LONG_ROW)
    ready = lambda p: kind_running(db, "defense")  # noqa: E731
    r = h.run(args, d / "work", name, send=(sig, ready, 60), ignore_sigint=ignore_sigint)
    steps = [r]
    data: dict[str, Any] = {}
    left = running_runs(sqlite_uri(db))
    if ignore_sigint:
        data["ran_to_end"] = r["exit"] == 0 and "MLflow parent run" in r["_stdout"]
    # kill -9: "the same command again"; otherwise a quick comparison on the same store
    rerun_args = args if sig == signal.SIGKILL else compare_args(db, FAST_ROW)
    rr = rerun_check(h, d, db, rerun_args, name + "-rerun")
    data.update({k: v for k, v in rr.items() if k != "rerun"})
    steps.append(rr["rerun"])
    after_rerun = running_runs(sqlite_uri(db))
    summary = f"re-run exit {rr['rerun_exit']}"
    if ignore_sigint:
        summary = ("SIGINT ignored, ran to the end; " if data["ran_to_end"] else "stopped by SIGINT; ") + summary
    if after_rerun["count"]:
        summary += f"; {after_rerun['count']} RUNNING after re-run"
    return {"main": r, "steps": steps, "running": left, "data": data, "data_summary": summary,
            "data_ok": rr["rerun_exit"] == 0 and not after_rerun["count"]}


@scenario("sigterm_compare", "`kill PID` (SIGTERM) during `compare`")
def s_sigterm(h, d):
    return signal_scenario(h, d, signal.SIGTERM, "sigterm")


@scenario("sighup_compare", "terminal closed (SIGHUP) during `compare`")
def s_sighup(h, d):
    return signal_scenario(h, d, signal.SIGHUP, "sighup")


@scenario("sigkill_compare_rerun", "`kill -9` during `compare`, then the same command again")
def s_sigkill_compare(h, d):
    return signal_scenario(h, d, signal.SIGKILL, "sigkill-compare")


@scenario("sigint_background", "`kill -INT PID` on a compare started in the background by a script")
def s_sigint_bg(h, d):
    return signal_scenario(h, d, signal.SIGINT, "sigint-bg", ignore_sigint=True)


@scenario("sigkill_train_rerun", "`kill -9` during `train` (new store), then the same command again", warm=False)
def s_sigkill_train(h, d):
    db = d / "store" / "mlflow.db"
    args = ["train", "--tracking-uri", sqlite_uri(db)]
    r = h.run(args, d / "work", "sigkill-train", timeout=TRAIN_TIMEOUT, send=(signal.SIGKILL, lambda p: kind_running(db, "victim"), 90))
    left = running_runs(sqlite_uri(db))
    rr = h.run(args, d / "work", "sigkill-train-rerun", timeout=TRAIN_TIMEOUT)
    after = running_runs(sqlite_uri(db))
    summary = f"re-run exit {rr['exit']}" + (f"; {after['count']} RUNNING after re-run" if after["count"] else "")
    return {"main": r, "steps": [r, rr], "running": left, "data": {"rerun_exit": rr["exit"]},
            "data_summary": summary, "data_ok": rr["exit"] == 0 and not after["count"]}


def output_scenario(h: Harness, d: Path, out_arg: str, name: str, prepare: Callable[[Path], None]) -> dict[str, Any]:
    db = clone_store(h.warm, d / "store")
    work = d / "work"
    work.mkdir(parents=True)
    prepare(work)
    r = h.run(compare_args(db, FAST_ROW, "--output", out_arg), work, name)
    defense_runs = [x for x in runs_by_kind(db) if x[1] == "defense"]
    ran = bool(defense_runs)
    summary = ("comparison ran first, then failed" if ran and r["exit"] != 0 else
               "refused before any run" if not ran else "comparison ran")
    return {"main": r, "steps": [r], "running": running_runs(sqlite_uri(db)),
            "data": {"defense_runs_created": len(defense_runs)}, "data_summary": summary,
            "data_ok": not ran or r["exit"] == 0}


@scenario("output_under_file", "`--output afile/sub` (a parent is a file)")
def s_out_file(h, d):
    return output_scenario(h, d, "afile/sub", "out-file", lambda w: (w / "afile").write_text("x\n"))


@scenario("output_readonly", "`--output` under a read-only folder")
def s_out_ro(h, d):
    def prep(w):
        (w / "ro").mkdir()
        (w / "ro").chmod(0o555)
    return output_scenario(h, d, "ro/sub", "out-ro", prep)


@scenario("output_long_name", "`--output` with a 300-character name")
def s_out_long(h, d):
    return output_scenario(h, d, "x" * 300, "out-long", lambda w: None)


def output_inplace(h: Harness, d: Path, name: str, dot: bool) -> dict[str, Any]:
    db = clone_store(h.warm, d / "store")
    precious = d / "precious.txt"
    precious.write_text("PRECIOUS\n")
    if dot:
        target = d / "work"
        target.mkdir()
        cwd, out_arg = target, "."
    else:
        cwd = d / "work"
        cwd.mkdir()
        target = cwd / "shared_results"
        target.mkdir()
        out_arg = "shared_results"
    target.chmod(0o2775)
    (target / "keep.txt").write_text("keep\n")
    (target / "summary.md").symlink_to(precious)
    before_mode = mode_of(target)
    r = h.run(compare_args(db, FAST_ROW, "--output", out_arg), cwd, name)
    after_mode = mode_of(target)
    intact = precious.read_text() == "PRECIOUS\n"
    keep = (target / "keep.txt").exists()
    parts = [f"mode {before_mode[2:]}→{after_mode[2:]}" if after_mode != before_mode else f"mode {after_mode[2:]} kept",
             "symlink target kept" if intact else "symlink target OVERWRITTEN"]
    if not keep:
        parts.append("other file lost")
    return {"main": r, "steps": [r], "running": running_runs(sqlite_uri(db)),
            "data": {"mode_before": before_mode, "mode_after": after_mode, "symlink_target_intact": intact,
                     "other_file_kept": keep},
            "data_summary": "; ".join(parts), "data_ok": intact and keep and after_mode == before_mode}


@scenario("output_shared_folder", "`--output shared_results` (existing folder, mode 2775, `summary.md` symlink in it)")
def s_out_shared(h, d):
    return output_inplace(h, d, "out-shared", dot=False)


@scenario("output_dot", "`--output .` (cwd mode 2775, `summary.md` symlink in it)")
def s_out_dot(h, d):
    return output_inplace(h, d, "out-dot", dot=True)


@scenario("all_rows_fail", "a comparison in which every row fails (`ours:layers=nosuchlayer`)")
def s_all_fail(h, d):
    db = clone_store(h.warm, d / "store")
    r = h.run(compare_args(db, FAIL_ROW), d / "work", "all-fail")
    comp = [x[2] for x in runs_by_kind(db) if x[1] == "comparison"]
    return {"main": r, "steps": [r], "running": running_runs(sqlite_uri(db)),
            "data": {"comparison_status": comp}, "data_summary": f"comparison run {', '.join(comp) or 'none'}",
            "data_ok": True}


@scenario("uri_unreachable", "`--tracking-uri http://127.0.0.1:9` (nothing listening), capped at 60 s", warm=False)
def s_uri_unreach(h, d):
    r = h.run(compare_args("http://127.0.0.1:9", FAST_ROW), d / "work", "uri-unreach", timeout=60)
    return {"main": r, "steps": [r], "running": {"count": None, "runs": [], "note": "no store"},
            "data": {}, "data_summary": "-", "data_ok": True}


@scenario("uri_file", "`--tracking-uri file://…` (new file store)", warm=False)
def s_uri_file(h, d):
    uri = (d / "fs").as_uri()
    r = h.run(compare_args(uri, FAST_ROW), d / "work", "uri-file")
    return {"main": r, "steps": [r], "running": running_runs(uri), "data": {}, "data_summary": "-", "data_ok": True}


@scenario("uri_unknown_scheme", "`--tracking-uri foo://bar` (unknown scheme)", warm=False)
def s_uri_unknown(h, d):
    r = h.run(compare_args("foo://bar", FAST_ROW), d / "work", "uri-unknown")
    return {"main": r, "steps": [r], "running": {"count": None, "runs": [], "note": "no store"},
            "data": {}, "data_summary": "-", "data_ok": True}


@scenario("readonly_cwd", "a read-only working folder (default store `sqlite:///mlruns/mlflow.db`)", warm=False)
def s_ro_cwd(h, d):
    work = d / "work"
    work.mkdir()
    work.chmod(0o555)
    r = h.run(["compare", *FAST_ROW, *COMMON], work, "ro-cwd")
    return {"main": r, "steps": [r], "running": {"count": None, "runs": [], "note": "no store could be created"},
            "data": {}, "data_summary": "-", "data_ok": True}


@scenario("readonly_store", "a read-only store (db file 0444, store folder 0555)")
def s_ro_store(h, d):
    db = clone_store(h.warm, d / "store")
    before = db.read_bytes()
    db.chmod(0o444)
    (d / "store").chmod(0o555)
    r = h.run(compare_args(db, FAST_ROW), d / "work", "ro-store")
    intact = db.read_bytes() == before
    return {"main": r, "steps": [r], "running": running_runs(sqlite_uri(db)), "data": {"store_unchanged": intact},
            "data_summary": "store unchanged" if intact else "store CHANGED", "data_ok": intact}


def count_victims(db: Path) -> int:
    return sum(1 for x in runs_by_kind(db) if x[1] == "victim" and x[2] == "FINISHED")


@scenario("concurrent_new_store", "two `bdtool train` started at once on a new store", warm=False)
def s_conc_new(h, d):
    db = d / "store" / "mlflow.db"
    args = ["train", "--tracking-uri", sqlite_uri(db)]
    p1 = h.start(args, d / "w1", "conc-new-1")
    p2 = h.start(args, d / "w2", "conc-new-2")
    r1, r2 = p1.finish(TRAIN_TIMEOUT), p2.finish(TRAIN_TIMEOUT)
    errs = r1["_stderr"] + r2["_stderr"]
    opserr = "OperationalError" in errs
    trained = sum(("trained in" in r["_stdout"] + r["_stderr"]) for r in (r1, r2))
    main = r1 if r1["exit"] != 0 or r2["exit"] == 0 else r2  # show the one that failed, if any
    return {"main": main, "steps": [r1, r2], "running": running_runs(sqlite_uri(db)),
            "data": {"exits": [r1["exit"], r2["exit"]], "sqlite_operational_error": opserr,
                     "trained": trained, "victim_runs": count_victims(db)},
            "exit_text": f"{r1['exit']} / {r2['exit']}",
            "data_summary": (f"exits {r1['exit']}/{r2['exit']}" + ("; sqlite OperationalError" if opserr else "")
                             + f"; victim trained {trained}×"),
            "data_ok": r1["exit"] == 0 and r2["exit"] == 0}


@scenario("concurrent_uncached_victim", "two `bdtool train` needing the same uncached victim (store initialised)",
          warm=False)
def s_conc_victim(h, d):
    db = d / "store" / "mlflow.db"
    db.parent.mkdir(parents=True)
    from mlflow.tracking import MlflowClient  # creates the schema (same MLflow as bdtool's)

    MlflowClient(tracking_uri=sqlite_uri(db)).search_experiments()
    args = ["train", "--tracking-uri", sqlite_uri(db)]
    p1 = h.start(args, d / "w1", "conc-victim-1")
    p2 = h.start(args, d / "w2", "conc-victim-2")
    r1, r2 = p1.finish(TRAIN_TIMEOUT), p2.finish(TRAIN_TIMEOUT)
    trained = sum(("trained in" in r["_stdout"] + r["_stderr"]) for r in (r1, r2))
    victims = count_victims(db)
    main = r1 if r1["exit"] != 0 or r2["exit"] == 0 else r2
    return {"main": main, "steps": [r1, r2], "running": running_runs(sqlite_uri(db)),
            "data": {"exits": [r1["exit"], r2["exit"]], "trained": trained, "victim_runs": victims},
            "exit_text": f"{r1['exit']} / {r2['exit']}",
            "data_summary": f"victim trained {trained}× ({victims} victim runs)",
            "data_ok": trained <= 1 and r1["exit"] == 0 and r2["exit"] == 0}


def victim_damage(h: Harness, d: Path, name: str, how: str) -> dict[str, Any]:
    db = clone_store(h.warm, d / "store")
    sds = victim_state_dicts(d / "store")
    for sd in sds:
        if how == "truncate":
            data = sd.read_bytes()
            sd.write_bytes(data[: len(data) // 2])
        else:
            sd.unlink()
    r = h.run(compare_args(db, FAST_ROW), d / "work", name)
    hint = "--retrain" in r["_stderr"] + r["_stdout"]
    return {"main": r, "steps": [r], "running": running_runs(sqlite_uri(db)),
            "data": {"files_damaged": len(sds), "suggests_retrain": hint},
            "data_summary": ("suggests `--retrain`" if hint else "no hint of `--retrain`") if r["exit"] else
                            "comparison ran (victim recovered)",
            "data_ok": hint or r["exit"] == 0}


@scenario("victim_truncated", "the cached victim's weights truncated")
def s_vic_trunc(h, d):
    return victim_damage(h, d, "victim-trunc", "truncate")


@scenario("victim_deleted", "the cached victim's weights deleted")
def s_vic_del(h, d):
    return victim_damage(h, d, "victim-del", "delete")


@scenario("artifacts_unwritable", "the artifact folder unwritable (0555) during a comparison")
def s_art_ro(h, d):
    db = clone_store(h.warm, d / "store")
    art = d / "store" / "artifacts"
    art.chmod(0o555)
    r = h.run(compare_args(db, FAST_ROW), d / "work", "art-ro")
    art.chmod(0o755)
    comp = [x for x in runs_by_kind(db) if x[1] == "comparison"]
    status = [x[2] for x in comp]
    summary_files = [f for x in comp for f in files_under(art / x[0])]
    bad = any(s == "FINISHED" for s in status) and not summary_files and r["exit"] != 0
    return {"main": r, "steps": [r], "running": running_runs(sqlite_uri(db)),
            "data": {"comparison_status": status, "comparison_artifacts": len(summary_files)},
            "data_summary": f"comparison run {', '.join(status) or 'none'}, {len(summary_files)} artifact file(s)",
            "data_ok": not bad and not (status and status[0] == "FINISHED" and not summary_files)}


@scenario("store_copied", "a store copied (`cp -a`) to another folder and used there")
def s_store_copy(h, d):
    db0 = clone_store(h.warm, d / "orig")
    shutil.copytree(d / "orig", d / "copy")
    before_orig = files_under(d / "orig" / "artifacts")
    before_copy = files_under(d / "copy" / "artifacts")
    db = d / "copy" / "mlflow.db"
    r = h.run(compare_args(db, FAST_ROW), d / "work", "store-copy")
    new_orig = len(files_under(d / "orig" / "artifacts") - before_orig)
    new_copy = len(files_under(d / "copy" / "artifacts") - before_copy)
    del db0
    return {"main": r, "steps": [r], "running": running_runs(sqlite_uri(db)),
            "data": {"new_files_in_original": new_orig, "new_files_in_copy": new_copy},
            "data_summary": f"{new_orig} new file(s) in the ORIGINAL store, {new_copy} in the copy"
                            + ("; refused in one line saying how to fix it" if one_line_refusal(r) else ""),
            "data_ok": new_orig == 0 and (r["exit"] == 0 or one_line_refusal(r))}


@scenario("store_moved", "a store moved (`mv`) to another folder and used there")
def s_store_move(h, d):
    clone_store(h.warm, d / "orig")
    (d / "orig").rename(d / "moved")
    db = d / "moved" / "mlflow.db"
    r = h.run(compare_args(db, FAST_ROW), d / "work", "store-move")
    reused = "reusing victim" in r["_stderr"]
    return {"main": r, "steps": [r], "running": running_runs(sqlite_uri(db)),
            "data": {"cached_victim_reused": reused},
            "data_summary": ("cached victim reused" if reused else "cached victim NOT loaded")
                            + ("; new runs refused in one line saying how to fix it" if one_line_refusal(r) else ""),
            "data_ok": reused and (r["exit"] == 0 or one_line_refusal(r))}


def one_line_refusal(r: dict[str, Any]) -> bool:
    """A non-zero exit whose stderr is one ``Error:`` line (plus progress), no traceback: the
    standard's "fails in one line saying how to fix it"."""
    return r["exit"] != 0 and not r["traceback"] and any(line.startswith("Error:") for line in r["stderr_tail"])


@scenario("ui_port_taken", "`bdtool ui --port P` with P taken (capped at 60 s)")
def s_ui_taken(h, d):
    db = clone_store(h.warm, d / "store")
    port = free_port()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(5)
    try:
        r = h.run(["ui", "--port", str(port), "--tracking-uri", sqlite_uri(db)], d / "work", "ui-taken", timeout=60)
    finally:
        sock.close()
    printed = f"127.0.0.1:{port}" in r["_stdout"]
    summary = ("printed the URL of the port's holder" if printed and r["exit"] == 0 else
               "printed the URL, then failed" if printed else "no URL printed")
    return {"main": r, "steps": [r], "running": running_runs(sqlite_uri(db)),
            "data": {"printed_url": printed}, "data_summary": summary,
            "data_ok": not (printed and r["exit"] == 0)}


@scenario("ui_port_invalid", "`bdtool ui --port 99999` (capped at 60 s)")
def s_ui_invalid(h, d):
    db = clone_store(h.warm, d / "store")
    r = h.run(["ui", "--port", "99999", "--tracking-uri", sqlite_uri(db)], d / "work", "ui-invalid", timeout=60)
    return {"main": r, "steps": [r], "running": running_runs(sqlite_uri(db)),
            "data": {}, "data_summary": "-", "data_ok": True}


# --------------------------------------------------------------------------------------------
# driver


def strip(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def warm_store(h: Harness) -> Path:
    store = h.root / "warm"
    r = h.run(["train", "--tracking-uri", sqlite_uri(store / "mlflow.db")], h.root / "warm-work", "warm", timeout=300)
    if r["exit"] != 0:
        raise SystemExit(f"warming the store failed (exit {r['exit']}):\n{r['_stderr'][-3000:]}")
    return store


def make_writable(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        for n in dirnames:
            try:
                os.chmod(os.path.join(dirpath, n), 0o755)
            except OSError:
                pass


def run_all(bdtool: str, label: str, out: Path, only: list[str] | None, keep: bool) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"bdtool-fi-{label}-"))
    h = Harness(bdtool, root)
    t_all = time.monotonic()
    existing = json.loads(out.read_text()) if (only and out.exists()) else {}
    results: dict[str, Any] = dict(existing.get("scenarios", {}))
    names = only or list(SCENARIOS)
    try:
        if any(SCENARIOS[n]["warm"] for n in names):
            t = time.monotonic()
            h.warm = warm_store(h)
            print(f"warm store ready in {time.monotonic() - t:.1f}s", file=sys.stderr)
        for name in names:
            spec = SCENARIOS[name]
            d = root / name
            d.mkdir()
            t = time.monotonic()
            try:
                res = spec["fn"](h, d)
                main = res["main"]
                entry = {
                    "fault": spec["fault"],
                    "exit": main["exit"], "exit_text": res.get("exit_text"),
                    "hung": main["hung"], "timeout_s": main["timeout_s"],
                    "stderr_lines": main["stderr_lines"], "stderr_tail": main["stderr_tail"],
                    "traceback": any(s["traceback"] for s in res["steps"][:1]) or main["traceback"],
                    "running_left": res["running"],
                    "data": res["data"], "data_summary": res["data_summary"], "data_ok": res["data_ok"],
                    "steps": [strip(s) for s in res["steps"]],
                }
            except Exception as e:  # noqa: BLE001 - the harness itself failed on this one
                entry = {"fault": spec["fault"], "harness_error": f"{type(e).__name__}: {e}"}
            finally:
                killed = h.cleanup()
            entry["leftover_processes_killed"] = killed
            entry["wall_s"] = round(time.monotonic() - t, 1)
            results[name] = entry
            print(f"{name:28s} {fmt_exit(entry):>14s}  {fmt_stderr(entry):22s} RUNNING={fmt_running(entry):3s} "
                  f"{entry.get('data_summary', entry.get('harness_error', ''))}  [{entry['wall_s']}s]",
                  file=sys.stderr)
    finally:
        h.cleanup()
        if not keep:
            make_writable(root)
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"scratch kept in {root}", file=sys.stderr)
    payload = {
        "label": label, "bdtool": bdtool, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "total_wall_s": round(time.monotonic() - t_all, 1) + (0 if not only else 0),
        "only": only, "cpus": os.cpu_count(), "privileges": "setpriv --bounding-set=-all" if h.prefix else "as is",
        "scenarios": {n: results[n] for n in [*SCENARIOS] if n in results},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    return payload


# --------------------------------------------------------------------------------------------
# rendering


def fmt_exit(e: dict[str, Any] | None) -> str:
    if e is None:
        return "not measured yet"
    if "harness_error" in e:
        return "harness error"
    if e.get("hung"):
        return f"hung > {int(e['timeout_s'])} s"
    return e.get("exit_text") or str(e["exit"])


def fmt_stderr(e: dict[str, Any] | None) -> str:
    if e is None or "harness_error" in e:
        return "" if e is None else e["harness_error"][:60]
    return f"{e['stderr_lines']} lines" + (", traceback" if e["traceback"] else "")


def fmt_running(e: dict[str, Any] | None) -> str:
    if e is None or "harness_error" in e:
        return ""
    c = e["running_left"].get("count")
    return "n/a" if c is None else str(c)


def fmt_data(e: dict[str, Any] | None) -> str:
    if e is None or "harness_error" in e:
        return ""
    return e["data_summary"] + ("" if e["data_ok"] else " ✗")


def cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render(doc: Path = DOC) -> None:
    res = {}
    for label in ("before", "after"):
        p = RESULTS / f"fault_injection_{label}.json"
        res[label] = json.loads(p.read_text()) if p.exists() else None

    def get(label, name):
        r = res[label]
        return None if r is None else r["scenarios"].get(name)

    lines = [
        "# Reliability: how bdtool handles faults",
        "",
        "## The standard",
        "",
        "Every fault below is held to the same standard: bdtool says what went wrong in **one clear line** on "
        "stderr (no traceback), exits **non-zero**, leaves **no MLflow run RUNNING** (an interrupted run is "
        "marked KILLED or FAILED), loses or overwrites **nothing stored** (the store, the cached victim, the "
        "files in an `--output` folder and their modes, files reached through symlinks), and **a re-run of the "
        "same command works**. Faults that can be detected before any work starts (a bad `--output`, an "
        "unreachable or unsupported tracking URI, a busy port) are refused before the comparison runs.",
        "",
        "## Re-running the measurements",
        "",
        "From the repository root (each full run takes about 10 minutes on 2 cores; nothing is written to "
        "`mlruns/`, all scratch folders live under a temporary directory and are removed afterwards):",
        "",
        "```sh",
        "# the code as it was before the fix (frozen install)",
        ".venv/bin/python benchmarks/fault_injection.py --bdtool /tmp/bv2/bin/bdtool --label before \\",
        "    --out benchmarks/results/fault_injection_before.json",
        "# the working tree",
        ".venv/bin/python benchmarks/fault_injection.py --bdtool .venv/bin/bdtool --label after \\",
        "    --out benchmarks/results/fault_injection_after.json",
        "# one or a few scenarios only (merged into the JSON file), and the list of names",
        ".venv/bin/python benchmarks/fault_injection.py --bdtool .venv/bin/bdtool --label after \\",
        "    --out benchmarks/results/fault_injection_after.json --only sigterm_compare output_dot",
        ".venv/bin/python benchmarks/fault_injection.py --list",
        "# rebuild this page from both JSON files",
        ".venv/bin/python benchmarks/fault_injection.py --render",
        "```",
        "",
        "Each scenario runs bdtool as real subprocesses (own session, so signals reach only it) in a scratch "
        "folder, on a copy of a store warmed once with `bdtool train` (artifact paths rewritten to the copy), "
        "with `--samples 5 --seeds 1 --no-log-models`. Signals are sent once a `defense` (or `victim`) run is "
        "RUNNING in the store, during a `basicft:epochs=100` row (a signal that lands after the process ended is recorded as such in the JSON). *runs RUNNING* is counted with "
        "`MlflowClient.search_runs` over all experiments (`ViewType.ALL`) right after the faulty command. "
        "Run as root, bdtool runs under `setpriv --bounding-set=-all` so read-only folders are read-only to it. "
        "Every process started (including `bdtool ui`'s MLflow server) is killed at the end of its scenario. "
        "✗ marks data that did not meet the standard.",
        "",
    ]
    for label in ("before", "after"):
        r = res[label]
        if r:
            lines.append(f"- **{label}**: `{r['bdtool']}`, measured {r['when']}, {r['cpus']} CPUs, "
                         f"full run {r['total_wall_s']} s" + (f" (partial: {', '.join(r['only'])})" if r.get("only") else ""))
        else:
            lines.append(f"- **{label}**: not measured yet")
    lines += [
        "",
        "## Results",
        "",
        "| fault | before: exit | before: stderr | before: runs RUNNING | before: data "
        "| after: exit | after: stderr | after: runs RUNNING | after: data |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, spec in SCENARIOS.items():
        b, a = get("before", name), get("after", name)
        row = [f"{spec['fault']} <br>`{name}`"]
        for e in (b, a):
            if e is None:
                row += ["not measured yet", "", "", ""]
            else:
                row += [fmt_exit(e), fmt_stderr(e), fmt_running(e), fmt_data(e)]
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    lines += ["", "## Last stderr line of each fault", "",
              "| fault | before | after |", "|---|---|---|"]
    for name in SCENARIOS:
        row = [f"`{name}`"]
        for label in ("before", "after"):
            e = get(label, name)
            tail = (e or {}).get("stderr_tail") or []
            row.append(f"`{tail[-1][:160]}`" if tail else ("not measured yet" if e is None else "(none)"))
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    doc.parent.mkdir(parents=True, exist_ok=True)
    kept = ""  # the hand-written sections after the generated ones (INPUTS_HEADING onward) survive a render
    if doc.exists() and INPUTS_HEADING in doc.read_text():
        kept = "\n" + doc.read_text()[doc.read_text().index(INPUTS_HEADING):]
    doc.write_text("\n".join(lines) + "\n" + kept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bdtool", help="the bdtool executable to test")
    ap.add_argument("--label", choices=["before", "after"])
    ap.add_argument("--out", type=Path, help="JSON results (default benchmarks/results/fault_injection_<label>.json)")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=list(SCENARIOS))
    ap.add_argument("--render", action="store_true", help="only rebuild docs/reliability.md from the JSON files")
    ap.add_argument("--list", action="store_true", help="list scenario names")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = ap.parse_args()
    if a.list:
        for n, s in SCENARIOS.items():
            print(f"{n:28s} {s['fault']}")
        return
    if a.render:
        render()
        print(f"wrote {DOC}")
        return
    if not a.bdtool or not a.label:
        ap.error("--bdtool and --label are required (or --render / --list)")
    bdtool = shutil.which(a.bdtool) or a.bdtool
    bdtool = str(Path(bdtool).absolute())
    out = a.out or RESULTS / f"fault_injection_{a.label}.json"
    if not out.is_absolute():
        out = Path.cwd() / out
    # stoppable with Ctrl-C / kill even when started in the background by a script (SIGINT
    # inherited as ignored); the scenario's processes are then still cleaned up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    payload = run_all(bdtool, a.label, out, a.only, a.keep)
    render()
    print(f"wrote {out} and {DOC} ({payload['total_wall_s']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
