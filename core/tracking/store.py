"""The MLflow store and its experiments (docs/architecture.md, "MLflow"): pointing MLflow at the
store, creating or checking its schema, and the experiment new runs are logged into.

mlflow is imported inside the functions that use it, here and in every module of this package:
importing it costs about a second, which ``bdtool --help`` and ``bdtool list`` should not pay.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``;
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` override it. Telemetry is off
(``bdtool/core/tracking/__init__.py``). The rest of the package, by concern: ``tags`` (every tag),
``locations`` (the store's folders and lock files, copied stores), ``runs`` (opening and ending a
run, its standard tags and params), ``inputs`` (dataset inputs), ``models`` (logging and loading
models), ``failures`` (what counts as the store's own error), ``locks``, ``orphans``, ``checks``,
``serialization``.
"""

from __future__ import annotations

import logging

from bdtool.core.tracking.locations import (artifact_root_for, check_artifact_location, resolve_tracking_uri,
                                            sqlite_path, store_lock_path)
from bdtool.core.tracking.locks import file_lock
from bdtool.core.tracking.tags import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

DEFAULT_EXPERIMENT = "bdtool"


def setup_tracking(uri: str | None = None) -> str:
    """Point MLflow at the store (creating the sqlite folder) and return the URI in use."""
    import mlflow  # heavy: imported on use (module docstring)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = resolve_tracking_uri(uri)
    db = sqlite_path(uri)
    if db is not None:
        db.expanduser().parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if db is not None:
        # Opening a new sqlite store runs MLflow's schema migration; two processes racing it fail
        # ("duplicate column name"). One process at a time creates or checks it, under a file lock.
        with file_lock(store_lock_path(uri)):
            _open_store(uri)
    return uri


def ensure_experiment(name: str, uri: str) -> str:
    """The id of experiment ``name`` (created with its artifacts in ``<store folder>/artifacts``),
    to log new runs in: refuses, in one line, an experiment of a copied or moved store that would
    still write its artifacts into the old folder (``check_artifact_location``)."""
    import mlflow  # heavy: imported on use (module docstring)

    with file_lock(store_lock_path(uri)):  # two processes creating the same experiment at once
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            check_artifact_location(exp, uri)
            if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older bdtool or by hand: mark it
                mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        return mlflow.create_experiment(name, artifact_location=artifact_root_for(uri),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def _open_store(uri: str) -> None:
    """Create (or check) the store's schema: the first query makes MLflow open the store, which it
    then keeps for the process."""
    import mlflow  # heavy: imported on use (module docstring)

    mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
