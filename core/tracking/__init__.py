"""bdtool.core.tracking: the MLflow store (runs, experiments, models) and safe model files.

``from bdtool.core import tracking`` gives the functions used everywhere (``tracking.tracked_run``,
...) and every tag (``tracking.KIND_TAG``, from ``tags``); the rest is imported from the module of
its concern (``store``, ``locations``, ``runs``, ``inputs``, ``models``, ``failures``: see
``store``'s docstring). See docs/architecture.md for the MLflow layout.
"""

import os

# Before mlflow is first imported (any module of this package runs this file first).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow prints "View run ... at: URL" on stdout when a run ends on a tracking server: it would
# break --json (stdout is JSON and nothing else); bdtool says where runs are itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from bdtool.core.tracking.locations import DEFAULT_TRACKING_URI, artifact_root_for, resolve_tracking_uri  # noqa: E402
from bdtool.core.tracking.models import download_state_dict, log_model  # noqa: E402
from bdtool.core.tracking.orphans import OrphanReport, mark_orphans  # noqa: E402
from bdtool.core.tracking.runs import (RunFailed, git_commit, log_params_flat, standard_tags,  # noqa: E402
                                       tracked_run)
from bdtool.core.tracking.store import DEFAULT_EXPERIMENT, ensure_experiment, setup_tracking  # noqa: E402
from bdtool.core.tracking.tags import (COMPARISON_KEY_TAG, DEFENSE_TAG, ERROR_TAG, EXECUTOR_TAG,  # noqa: E402
                                       HOST_TAG, KIND_TAG, KNOWLEDGE_TAG, METRIC_ERROR_TAG, ORPHANED_TAG, PID_TAG,
                                       ROW_TAG, SOURCE_SHA256_TAG, SOURCE_TAG, SUMMARY_SHA256_TAG, VICTIM_HASH_TAG,
                                       VICTIM_RUN_TAG)

__all__ = [
    "DEFAULT_EXPERIMENT", "DEFAULT_TRACKING_URI", "KIND_TAG", "KNOWLEDGE_TAG", "METRIC_ERROR_TAG", "DEFENSE_TAG", "ERROR_TAG", "EXECUTOR_TAG", "ROW_TAG", "VICTIM_HASH_TAG", "VICTIM_RUN_TAG",
    "HOST_TAG", "PID_TAG", "ORPHANED_TAG", "COMPARISON_KEY_TAG", "SOURCE_TAG", "SOURCE_SHA256_TAG", "SUMMARY_SHA256_TAG", "RunFailed", "OrphanReport", "mark_orphans",
    "artifact_root_for", "download_state_dict",
    "ensure_experiment", "git_commit", "log_model", "log_params_flat",
    "resolve_tracking_uri", "setup_tracking", "standard_tags", "tracked_run",
]
