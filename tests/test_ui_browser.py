"""`bdtool ui` in a real browser (headless Chromium, Debian package `chromium`): a researcher sees
the comparison's runs, their datasets and its table (docs/ui.md). Slow: the server takes ~10 s to
start and each page ~15 s of virtual time."""

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html import unescape
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from test_ui import free_port, stop_ui

CHROMIUM = Path("/usr/bin/chromium")


def page_text(url: str, profile: Path) -> str:
    """The text of ``url`` once the MLflow SPA has rendered it in headless Chromium."""
    out = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    html = re.sub(r"<script.*?</script>|<style.*?</style>", " ", out.stdout, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def non_loopback_address() -> str | None:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = s.getsockname()[0]
        return None if address.startswith("127.") else address
    return None


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium (apt-get install chromium)")
def test_a_comparison_reads_well_in_a_real_browser(mlflow_store, digits_victim, tmp_path):
    from bdtool.cli import main

    experiment = "browser-tests"
    result = CliRunner().invoke(main, ["compare", "--device", "cpu", "--tracking-uri", mlflow_store, "--experiment",
                                       experiment, "--defense", "suppress-target", "--defense", "ours",
                                       "--samples", "5", "--seeds", "1", "--no-log-models"])
    assert result.exit_code == 0, result.output
    parent = result.output.split("MLflow parent run ")[1].split()[0]
    client = MlflowClient(tracking_uri=mlflow_store)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    acc_row = next(line for line in result.output.splitlines() if line.startswith("Ours (trigger)"))
    a_metric_value = re.findall(r"\d+\.\d\d ± \d+\.\d\d", acc_row)[0]

    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_store)
    proc = subprocess.Popen([sys.executable, "-m", "bdtool.cli", "ui", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        else:
            pytest.fail("the UI did not answer")

        # Bound to 127.0.0.1 only: the machine's other address refuses the connection.
        other = non_loopback_address()
        if other is not None:
            with pytest.raises(OSError), socket.create_connection((other, port), timeout=2):
                pass

        # The experiment's runs (MLflow 3 opens GenAI's Overview unless the browser chose "Model
        # training"; the link docs/ui.md gives selects it).
        runs = page_text(f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning",
                         tmp_path / "profile-runs")
        assert "Run Name" in runs and "Dataset" in runs, runs[:2000]
        assert "compare digits/small-cnn/badnets" in runs

        # The comparison's parent run: its child runs by row label and its table as description.
        page = page_text(f"{base}/#/experiments/{experiment_id}/runs/{parent}?workflowType=machine_learning",
                         tmp_path / "profile-parent")
        assert "Ours (trigger) n=5 seed=0" in page and "Null: suppress target (target label) n=5 seed=0" in page, page[:3000]
        assert "Description" in page and "Score (↑)" in page
        assert a_metric_value in page

        # A defense run: its datasets (D_U for training, the evaluation half).
        child = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}' and "
                                                    "tags.`bdtool.row` = 'Ours (trigger)'")[0]
        page = page_text(f"{base}/#/experiments/{experiment_id}/runs/{child.info.run_id}?workflowType=machine_learning",
                         tmp_path / "profile-child")
        assert "Datasets digits D_U n=5 seed=0" in page, page[:3000]  # the evaluation half is behind "+1"
        assert "defense ours , knowledge trigger , n=5, seed=0" in page  # its description
    finally:
        stop_ui(proc)
