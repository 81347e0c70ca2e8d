"""`bdtool ui` really serves the comparison's runs (slow: the MLflow server takes ~10 s to start)."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def stop_ui(proc: subprocess.Popen) -> str:
    """Ctrl-C a ``bdtool ui`` child and return its output; if it does not stop within a minute,
    kill it and its MLflow server (never leave a server behind, even when the test fails)."""
    proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        match = re.search(r"server pid (\d+)", output)
        if match:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(match.group(1)), signal.SIGKILL)
        raise
    return output


@pytest.mark.slow
def test_ui_serves_the_runs_of_a_comparison(mlflow_store, digits_victim):
    client = MlflowClient(tracking_uri=mlflow_store)
    experiment = client.get_experiment_by_name("tests")
    expected = {r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    assert digits_victim.run_id in expected

    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_store)
    proc = subprocess.Popen([sys.executable, "-m", "bdtool.cli", "ui", "--port", str(port), "--experiment", "tests"],
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        runs = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                runs = post(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
                            {"experiment_ids": [experiment.experiment_id], "max_results": 1000})
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        assert runs is not None, f"the UI did not answer; output: {proc.stdout.read() if proc.poll() is not None else ''}"
        served = {r["info"]["run_id"] for r in runs.get("runs", [])}
        assert expected <= served
        # The served store as a tracking server: `--json` stays JSON alone (MLflow prints "View run
        # ... at: URL" on stdout when a run ends on a server, unless told not to).
        compared = subprocess.run([sys.executable, "-m", "bdtool.cli", "compare", "--tracking-uri",
                                   f"http://127.0.0.1:{port}", "--experiment", "tests", "--defense", "suppress-target",
                                   "--samples", "5", "--seeds", "1", "--no-log-models", "--device", "cpu", "--json"],
                                  capture_output=True, text=True, timeout=300)
        assert compared.returncode == 0, compared.stderr
        assert json.loads(compared.stdout)["runs_total"] == 1
    finally:
        output = stop_ui(proc)
    assert proc.returncode == 0
    assert f"http://127.0.0.1:{port}" in output and "stopped" in output
    runs_link = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert runs_link in output  # MLflow 3 opens in GenAI mode without it
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
