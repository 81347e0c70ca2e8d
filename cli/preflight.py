"""Checks every command runs first, before any data is loaded, model trained or run created:
the MLflow store (``core/tracking/checks.py``) and ``--output`` (``core/experiment/output.py``).
Each failure is a ``BdtoolError``: one line naming the path and the fix."""

from __future__ import annotations

from bdtool.core.experiment.output import prepare_output_dir
from bdtool.core.tracking.checks import check_store


def preflight(tracking_uri: str | None, output: str | None = None) -> None:
    """Check the store ``tracking_uri`` would resolve to, then create and probe ``output``."""
    from bdtool.core.tracking.locations import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    check_store(uri)
    if output:
        refuse_store_folders(output, uri)
        prepare_output_dir(output)


def refuse_store_folders(output: str, uri: str) -> None:
    """``--output`` inside the store's own folders (its ``artifacts`` and ``locks``) would overwrite
    what past runs stored (``bdtool show`` would then print another comparison under their id)."""
    from pathlib import Path

    from bdtool.core.errors import BdtoolError
    from bdtool.core.tracking.locations import store_dir

    here = store_dir(uri)
    if here is None:
        return
    target = Path(output).expanduser().resolve()
    for own in (here / "artifacts", here / "locks"):
        if target == own or own in target.parents:
            raise BdtoolError(f"--output {output}: it is inside the tracking store's own folder {own}, where runs "
                              "keep what they logged; choose a folder outside it")
