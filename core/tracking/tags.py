"""Every tag bdtool sets on an MLflow run or experiment, spelled once (docs/architecture.md,
"MLflow"). A contract of the tracking layer: it imports nothing."""

from __future__ import annotations

# What a run is: KIND_TAG is "victim", "comparison", "defense" or "defend".
KIND_TAG = "bdtool.kind"
VICTIM_HASH_TAG = "bdtool.victim_hash"
VICTIM_RUN_TAG = "bdtool.victim_run_id"
ROW_TAG = "bdtool.row"
DEFENSE_TAG = "bdtool.defense"
ERROR_TAG = "bdtool.error"
METRIC_ERROR_TAG = "bdtool.metric_errors"
KNOWLEDGE_TAG = "bdtool.knowledge"
EXECUTOR_TAG = "bdtool.executor"  # a comparison's executor: "local" or "ray" (docs/scale-out.md)
COMPARISON_KEY_TAG = "bdtool.comparison_key"
"""A comparison's key (victim, rows, sizes, seeds): how ``--resume`` finds it (core/experiment/resume.py)."""

# A user's own victim (``--victim``, ``bdtool defend``).
SOURCE_TAG = "bdtool.victim_source"
"""Where a user's victim came from (``--victim``: the path or MLflow URI as given)."""
SOURCE_SHA256_TAG = "bdtool.victim_source_sha256"

# The standard tags of every run (core/tracking/runs.py, ``standard_tags``).
VERSION_TAG = "bdtool.version"
DEVICE_TAG = "bdtool.device"
TORCH_TAG = "bdtool.torch"
GIT_COMMIT_TAG = "mlflow.source.git.commit"

# Where a run's process runs: a RUNNING run whose process is gone is ended KILLED with
# ORPHANED_TAG by the next bdtool command on that host (core/tracking/orphans.py).
HOST_TAG = "bdtool.host"
PID_TAG = "bdtool.pid"
ORPHANED_TAG = "bdtool.orphaned"

# Model files (core/tracking/models.py).
STATE_DICT_DIGEST_TAG = "bdtool.state_dict_sha256"
"""SHA-256 of a run's ``model/state_dict.pt``, set by ``log_model``."""
DAMAGED_TAG = "bdtool.damaged"
"""Set (to the reason) on a victim run whose model file is damaged: the cache no longer finds it."""
SUMMARY_SHA256_TAG = "bdtool.summary_sha256"
"""A comparison's sha256 of the summary/summary.json it logged: ``bdtool show`` refuses a summary
that is not what the run wrote (docs/reliability.md)."""

# MLflow's own tags. The experiment kind marks bdtool's experiment as model training (not GenAI);
# the note is a run's description, rendered as Markdown by the UI.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"


def state_dict_digest_tag(name: str = "model") -> str:
    return STATE_DICT_DIGEST_TAG if name == "model" else f"{STATE_DICT_DIGEST_TAG}.{name}"

WEIGHTS_TAG = "bdtool.weights"
"""On a LoggedModel: the URI of the one copy of its weights (``runs:/RUN/model/state_dict.pt``)."""
WEIGHTS_SHA256_TAG = "bdtool.weights_sha256"
"""On a LoggedModel: the SHA-256 of that state dict."""
