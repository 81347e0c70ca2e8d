"""bdtool.core.tracking: the MLflow store (runs, experiments, models) and safe model files.

``from bdtool.core import tracking`` gives the store's functions (``tracking.tracked_run``, ...);
see docs/architecture.md for the MLflow layout.
"""

from bdtool.core.tracking.store import (
    DEFAULT_EXPERIMENT,
    DEFAULT_TRACKING_URI,
    DEFENSE_TAG,
    ERROR_TAG,
    EXECUTOR_TAG,
    HOST_TAG,
    KIND_TAG,
    KNOWLEDGE_TAG,
    METRIC_ERROR_TAG,
    ORPHANED_TAG,
    PID_TAG,
    ROW_TAG,
    VICTIM_HASH_TAG,
    VICTIM_RUN_TAG,
    RunFailed,
    artifact_root_for,
    download_state_dict,
    ensure_experiment,
    git_commit,
    log_model,
    log_params_flat,
    pip_requirements,
    resolve_tracking_uri,
    setup_tracking,
    standard_tags,
    tracked_run,
)
from bdtool.core.tracking.orphans import OrphanReport, mark_orphans

__all__ = [
    "DEFAULT_EXPERIMENT", "DEFAULT_TRACKING_URI", "KIND_TAG", "KNOWLEDGE_TAG", "METRIC_ERROR_TAG", "DEFENSE_TAG", "ERROR_TAG", "EXECUTOR_TAG", "ROW_TAG", "VICTIM_HASH_TAG", "VICTIM_RUN_TAG",
    "HOST_TAG", "PID_TAG", "ORPHANED_TAG", "RunFailed", "OrphanReport", "mark_orphans",
    "artifact_root_for", "download_state_dict",
    "ensure_experiment", "git_commit", "log_model", "log_params_flat", "pip_requirements",
    "resolve_tracking_uri", "setup_tracking", "standard_tags", "tracked_run",
]
