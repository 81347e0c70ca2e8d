"""Where a store's files are: its URI, its sqlite folder, its lock files and its artifacts, and
the detection of a store that was copied or moved (docs/architecture.md, "MLflow")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bdtool.core.errors import BdtoolError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def store_dir(uri: str) -> Path | None:
    """The folder of a sqlite store (its database and ``artifacts``), resolved; None otherwise."""
    db = sqlite_path(uri)
    return None if db is None else db.expanduser().resolve().parent


def store_lock_path(uri: str) -> Path | None:
    """``<db>.lock``, next to a sqlite store's database: held while the schema is created or
    checked and while an experiment is looked up or created. None (no lock) for other stores."""
    db = sqlite_path(uri)
    return None if db is None else db.expanduser().resolve().with_name(db.name + ".lock")


def victim_lock_path(uri: str, digest: str) -> Path | None:
    """``<store folder>/locks/victim-<hash>.lock``: held from looking a victim up to logging it,
    so that processes needing the same victim train it once. None (no lock) for other stores."""
    here = store_dir(uri)
    return None if here is None else here / "locks" / f"victim-{digest}.lock"


def artifact_root_for(uri: str) -> str | None:
    """``<store folder>/artifacts`` for a sqlite store; the server's default otherwise."""
    here = store_dir(uri)
    return None if here is None else (here / "artifacts").as_uri()


def _local_path(file_uri: str) -> Path | None:
    if file_uri.startswith("file:"):
        from mlflow.utils.file_utils import local_file_uri_to_path  # heavy: imported on use

        return Path(local_file_uri_to_path(file_uri))
    if "://" in file_uri:
        return None
    return Path(file_uri)


def _same_folder(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _is_under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def local_artifact_dir(artifact_uri: str, run_id: str, uri: str) -> Path | None:
    """The folder of a run's artifacts on this machine, or None when they are not local files
    (download them through MLflow). For a store that was copied or moved, the run's recorded
    ``artifact_uri`` points into the old store folder: the same run's folder under the current
    ``<store folder>/artifacts`` (the path after the ``artifacts`` component before the run id) is
    used when it exists, or when the old one is gone."""
    path = _local_path(artifact_uri)
    here = store_dir(uri)
    if path is None or here is None or _is_under(path, here):
        return path
    parts = path.parts
    if run_id not in parts:
        return path
    i = len(parts) - 1 - parts[::-1].index(run_id)
    roots = [j for j in range(i) if parts[j] == "artifacts"]
    if not roots:
        return path
    mapped = here.joinpath("artifacts", *parts[roots[-1] + 1:])
    return mapped if mapped.exists() or not path.exists() else path


def check_artifact_location(experiment: Any, uri: str) -> None:
    """Refuse (one line) to log into an experiment whose artifacts go to another store's folder:
    bdtool creates every experiment with ``<store folder>/artifacts`` (``artifact_root_for``), an
    absolute path MLflow cannot change, so a copied or moved store would still write there."""
    here = store_dir(uri)
    location = _local_path(experiment.artifact_location or "")
    if here is None or location is None or location.name != "artifacts" or _same_folder(location.parent, here):
        return
    old = location.parent
    raise BdtoolError(
        f"this store was copied or moved from {old}: its experiment '{experiment.name}' still writes artifacts "
        f"to {old}/artifacts; use a new --experiment name here, or use the store in {old}")
