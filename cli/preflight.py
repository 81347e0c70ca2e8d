"""Checks every command runs first, before any data is loaded, model trained or run created:
the MLflow store (``core/tracking/checks.py``) and ``--output`` (``core/experiment/output.py``).
Each failure is a ``BdtoolError``: one line naming the path and the fix."""

from __future__ import annotations

from bdtool.core.experiment.output import prepare_output_dir
from bdtool.core.tracking.checks import check_store


def preflight(tracking_uri: str | None, output: str | None = None) -> None:
    """Check the store ``tracking_uri`` would resolve to, then create and probe ``output``."""
    from bdtool.core.tracking.locations import resolve_tracking_uri

    check_store(resolve_tracking_uri(tracking_uri))
    if output:
        prepare_output_dir(output)
