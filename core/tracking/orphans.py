"""Runs left RUNNING by a bdtool process that is gone (SIGKILL, a crash, a power cut).

Every run carries the host and pid of the process that opened it (``HOST_TAG``, ``PID_TAG``,
set by ``standard_tags``). ``mark_orphans`` finds the store's RUNNING runs of *this* host whose
process no longer exists and ends them KILLED with ``ORPHANED_TAG`` saying why. Runs of another
host are left alone: their process cannot be checked from here. The CLI calls it when a command
opens the store (docs/architecture.md, "MLflow").
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from bdtool.core.tracking.locations import resolve_tracking_uri, sqlite_path
from bdtool.core.tracking.tags import HOST_TAG, ORPHANED_TAG, PID_TAG


@dataclass
class OrphanReport:
    killed: list[str] = field(default_factory=list)
    """Run ids ended KILLED here."""
    other_hosts: int = 0
    """RUNNING runs of other hosts, left alone."""


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (it may belong to another user)."""
    if pid <= 0:
        return True  # not a pid we wrote: never take it for gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's; anything else: do not guess
        return True
    return True


def mark_orphans(uri: str | None = None) -> OrphanReport:
    """End KILLED every RUNNING run of this host whose process is gone; one search over all
    active experiments. A sqlite store that does not exist yet is not created."""
    report = OrphanReport()
    uri = resolve_tracking_uri(uri)
    db = sqlite_path(uri)
    if db is not None and not db.expanduser().exists():
        return report

    from mlflow.entities import ViewType  # heavy: imported on use (store.py's docstring)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY,
                                                                          max_results=50000)]
    if not experiment_ids:
        return report
    host = socket.gethostname()
    me = os.getpid()
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if HOST_TAG not in tags or PID_TAG not in tags:
                continue  # not opened by a bdtool that records where it runs
            if tags[HOST_TAG] != host:
                report.other_hosts += 1
                continue
            try:
                pid = int(tags[PID_TAG])
            except ValueError:
                continue
            if pid == me or process_exists(pid):
                continue
            client.set_tag(run.info.run_id, ORPHANED_TAG, f"process {pid} on {host} is gone")
            client.set_terminated(run.info.run_id, "KILLED")
            report.killed.append(run.info.run_id)
        token = page.token
        if not token:
            return report
