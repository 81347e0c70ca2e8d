"""``bdtool ui``: the MLflow UI for the same store, bound to 127.0.0.1 (README "MLflow";
docs/architecture.md, "MLflow")."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import click

from bdtool.cli.main import main, report_orphans
from bdtool.cli.options import EXPERIMENT_ENV, ExperimentName, dry_run_option, tracking_uri_option
from bdtool.cli.preflight import preflight
from bdtool.core import interrupts
from bdtool.core.tracking import artifact_root_for, resolve_tracking_uri, setup_tracking


def server_command(tracking_uri: str, port: int) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    root = artifact_root_for(tracking_uri)
    if root:
        cmd += ["--default-artifact-root", root]
    return cmd


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Job execution would start 7 extra processes; one worker starts in ~9 s on 2 cores.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


@main.command()
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535), help="Port on 127.0.0.1.")
@tracking_uri_option
@click.option("experiment_name", "--experiment", default="bdtool", show_default=True, type=ExperimentName(),
              envvar=EXPERIMENT_ENV, show_envvar=True, help="The experiment whose runs page to print a link to.")
@dry_run_option
def ui(port: int, tracking_uri: str | None, experiment_name: str, dry_run: bool) -> None:
    """Serve the MLflow UI for bdtool's store on 127.0.0.1 until Ctrl-C.

    \b
    Examples:
      bdtool ui                                        # http://127.0.0.1:5000
      bdtool ui --port 5050 --experiment tables
    """
    preflight(tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    setup_tracking(uri)
    check_port_free(port)
    if dry_run:
        click.echo(f"dry run: would serve the MLflow UI for {uri} at http://127.0.0.1:{port}; store and port checked")
        return
    report_orphans(uri)
    # SIGINT, SIGTERM, SIGHUP and SIGQUIT raise KeyboardInterrupt (bdtool.cli.signals, installed
    # by BdtoolGroup), even when a shell started us in the background with SIGINT ignored; here
    # they stop the server and end the command normally ("stopped", exit 0).
    # The server gets its own session so that stopping it stops its uvicorn worker too.
    proc = subprocess.Popen(server_command(uri, port), env=server_env(), start_new_session=True)
    try:
        click.echo(f"MLflow UI for {uri} at http://127.0.0.1:{port} (server pid {proc.pid}; Ctrl-C to stop)")
        experiment = _experiment_id(experiment_name)
        if experiment is not None:
            # MLflow 3 opens in its GenAI mode unless the URL asks for the model-training views.
            click.echo(f"runs of experiment '{experiment_name}': "
                       f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning")
        code = proc.wait()
    except KeyboardInterrupt:
        stop_server(proc)
        interrupts.reset()  # the stop is handled here: the command ends normally
        click.echo("stopped")
        return
    raise click.ClickException(f"the MLflow server (pid {proc.pid}) exited on its own with code {code}; "
                               "its output above says why")


def check_port_free(port: int) -> None:
    """Refuse, in one line, a port already taken on 127.0.0.1 (before starting the server, which
    would otherwise fail after seconds with a traceback of its own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise click.ClickException(f"port {port} on 127.0.0.1 is not free ({exc.strerror or exc}); "
                                       "pick another with --port") from None


def _experiment_id(name: str) -> str | None:
    """The id of experiment ``name`` in the store set up by ``setup_tracking``, or None."""
    import mlflow  # heavy: imported on use

    try:
        experiment = mlflow.get_experiment_by_name(name)
    except Exception:  # noqa: BLE001 - only a convenience link; the server still starts
        return None
    return experiment.experiment_id if experiment is not None else None


def stop_server(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL it if it is still there after ``grace`` s."""
    for sig, timeout in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
