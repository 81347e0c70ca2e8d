"""MLflow store, experiments, run tags and model logging (docs/architecture.md, "MLflow").

mlflow is imported inside the functions that use it: importing it costs about a second, which
``bdtool --help`` and ``bdtool list`` should not pay.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``;
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` override it. Telemetry is off.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow prints "View run ... at: URL" on stdout when a run ends on a tracking server: it would
# break --json (stdout is JSON and nothing else); bdtool says where runs are itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import functools
import logging
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

import bdtool
from bdtool.core import interrupts
from bdtool.core.tracking.locks import file_lock
from bdtool.core.errors import BdtoolError, UnsafeModelFileError, first_line
from bdtool.core.tracking.serialization import DamagedModelFileError, file_sha256, load_state_dict, save_state_dict

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_EXPERIMENT = "bdtool"

# Run tags, spelled once. KIND_TAG says what a run is: "victim", "comparison" or "defense".
KIND_TAG = "bdtool.kind"
VICTIM_HASH_TAG = "bdtool.victim_hash"
VICTIM_RUN_TAG = "bdtool.victim_run_id"
ROW_TAG = "bdtool.row"
DEFENSE_TAG = "bdtool.defense"
ERROR_TAG = "bdtool.error"
METRIC_ERROR_TAG = "bdtool.metric_errors"
KNOWLEDGE_TAG = "bdtool.knowledge"
EXECUTOR_TAG = "bdtool.executor"  # a comparison's executor: "local" or "ray" (docs/scale-out.md)
# MLflow's own tags. The experiment kind marks bdtool's experiment as model training (not GenAI);
# the note is a run's description, rendered as Markdown by the UI.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"


def resolve_tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def setup_tracking(uri: str | None = None) -> str:
    """Point MLflow at the store (creating the sqlite folder) and return the URI in use."""
    import mlflow  # heavy: imported on use (module docstring)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = resolve_tracking_uri(uri)
    db = _sqlite_path(uri)
    if db is not None:
        db.expanduser().parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if db is not None:
        # Opening a new sqlite store runs MLflow's schema migration; two processes racing it fail
        # ("duplicate column name"). One process at a time creates or checks it, under a file lock.
        with file_lock(store_lock_path(uri)):
            _open_store(uri)
    return uri


def artifact_root_for(uri: str) -> str | None:
    """``<store folder>/artifacts`` for a sqlite store; the server's default otherwise."""
    here = store_dir(uri)
    return None if here is None else (here / "artifacts").as_uri()


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


def set_description(text: str) -> None:
    """The active run's description (Markdown; shown on its page in the UI)."""
    import mlflow  # heavy: imported on use (module docstring)

    mlflow.set_tag(DESCRIPTION_TAG, text[:60000])


def log_dataset_input(data: Any, name: str, context: str, **source: Any) -> None:
    """Log ``data`` (a ``LabeledTensors``) as an MLflow dataset input of the active run
    (``dataset_input``)."""
    import mlflow  # heavy: imported on use (module docstring)

    mlflow.log_input(dataset_input(data, name, **source), context=context)


def dataset_input(data: Any, name: str, **source: Any) -> Any:
    """``data`` (a ``LabeledTensors``) as an MLflow dataset: name, a digest of its labels and of
    its images' bytes, their shapes as the schema, and ``source`` (data set, split, n, seed, ...)
    as the source's tags. The images themselves are not logged. Build it once for data that many
    runs share (the evaluation half) and ``mlflow.log_input`` it in each."""
    import hashlib

    import numpy as np
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    x, y = data.x.detach().cpu(), data.y.detach().cpu()
    digest = hashlib.sha256()
    digest.update(y.numpy().astype(np.int64).tobytes())
    digest.update(x.contiguous().numpy().tobytes())
    schema = Schema([TensorSpec(np.dtype(str(x.dtype).removeprefix("torch.")), (-1, *x.shape[1:]), "image"),
                     TensorSpec(np.dtype(str(y.dtype).removeprefix("torch.")), (-1,), "label")])
    tags = {k: str(v) for k, v in source.items()}
    return MetaDataset(CodeDatasetSource(tags=tags), name=name, digest=digest.hexdigest()[:8], schema=schema)


class RunFailed(Exception):
    """Raised inside ``tracked_run`` after the run's work is done, to end it FAILED with ``reason``
    as its ``ERROR_TAG`` (a comparison whose rows failed); ``tracked_run`` swallows it, so the code
    after the ``with`` block goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@contextmanager
def tracked_run(on_error: Callable[[BaseException], None] | None = None, **start_run_kwargs: Any) -> Iterator[Any]:
    """``mlflow.start_run`` that always ends the run with the right status: FINISHED, FAILED on an
    exception, KILLED on Ctrl-C or a signal (``KeyboardInterrupt``, bdtool.cli.signals); the
    exception propagates. ``on_error(exc)`` runs inside the run before it is ended FAILED (to tag
    it with the error). ``raise RunFailed(reason)`` in the block ends it FAILED with ``reason`` as
    its ``ERROR_TAG`` and is not propagated. The one way bdtool opens a run."""
    import mlflow  # heavy: imported on use (module docstring)

    interrupts.check()
    try:
        run = mlflow.start_run(**start_run_kwargs)
    except Exception as exc:  # a signal's raise swallowed on the way leaves the store's connection half-used
        interrupts.raise_if_pending(exc)
        raise
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except RunFailed as exc:
        mlflow.set_tag(ERROR_TAG, exc.reason[:5000])
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as exc:
        if interrupts.pending() is not None:  # an error while a stop was pending: the stop, not a failed run
            status = "KILLED"
            interrupts.raise_if_pending(exc)
        if on_error is not None:
            on_error(exc)
        raise
    finally:
        _end_run(run.info.run_id, status)


def _end_run(run_id: str, status: str) -> None:
    """``mlflow.end_run(status)``; after a stop, a second try on a fresh client if the first
    fails (the interrupted connection), so that the stop is not replaced by the store's error."""
    import mlflow  # heavy: imported on use (module docstring)

    try:
        mlflow.end_run(status)
    except Exception:
        if status != "KILLED":
            raise
        try:  # end_run pops the active run before it writes the status: only the write is left
            mlflow.MlflowClient().set_terminated(run_id, status)
        except Exception:  # noqa: BLE001 - the store is gone: the next command marks it (orphans)
            pass


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit bdtool runs from (tagged on every run); asked of git once per process."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# Where a run's process runs: a RUNNING run whose process is gone is ended KILLED with
# ORPHANED_TAG by the next bdtool command on that host (core/tracking/orphans.py).
HOST_TAG = "bdtool.host"
PID_TAG = "bdtool.pid"
ORPHANED_TAG = "bdtool.orphaned"


def standard_tags(device: torch.device) -> dict[str, str]:
    import socket

    tags = {"bdtool.version": bdtool.__version__, "bdtool.device": str(device),
            "bdtool.torch": torch.__version__, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def pip_requirements() -> list[str]:
    import torchvision  # heavy: imported on use (only when a model is logged)

    return [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]


def log_model(model: nn.Module, example: torch.Tensor, name: str = "model") -> None:
    """Log ``model`` as an MLflow PyTorch model (explicit pip requirements, so no slow inference
    subprocess) and a ``state_dict.pt`` copy that bdtool reloads with ``weights_only=True``."""
    import mlflow  # heavy: imported on use (module docstring)
    import mlflow.pytorch

    model = model.eval().cpu()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_state_dict(model, Path(tmp) / "state_dict.pt")
        mlflow.log_artifact(str(path), artifact_path=name)
        # Its digest, checked when it is loaded again (download_state_dict): a damaged cache is found.
        mlflow.set_tag(state_dict_digest_tag(name), file_sha256(path))
    mlflow.pytorch.log_model(
        model,
        name=f"{name}-mlflow",
        input_example=example[:2].cpu().numpy(),  # batch of 2: a batch of 1 would fix the batch dim
        pip_requirements=pip_requirements(),
    )


def download_state_dict(run_id: str, name: str = "model") -> dict[str, torch.Tensor]:
    """The ``<name>/state_dict.pt`` logged by ``log_model`` in run ``run_id``. A run of a sqlite
    store is read in place, from the current store's ``artifacts`` folder when the store was copied
    or moved (``local_artifact_dir``). Raises ``DamagedModelFileError`` (one line naming the run)
    when the file is missing, differs from the SHA-256 digest recorded when it was logged, or is
    not a plain tensor state dict."""
    import mlflow  # heavy: imported on use (module docstring)
    from mlflow.exceptions import MlflowException

    run = mlflow.MlflowClient().get_run(run_id)
    artifact = f"{name}/state_dict.pt"
    folder = local_artifact_dir(run.info.artifact_uri, run_id, mlflow.get_tracking_uri())
    with tempfile.TemporaryDirectory() as tmp:
        if folder is not None:
            path = folder / artifact
            if not path.is_file():
                raise DamagedModelFileError(run_id, f"{artifact} is missing ({path})")
        else:
            try:
                path = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp))
            except (OSError, MlflowException) as exc:
                raise DamagedModelFileError(run_id, f"{artifact} could not be downloaded ({first_line(exc)})") from None
        expected = run.data.tags.get(state_dict_digest_tag(name))
        if expected and file_sha256(path) != expected:
            raise DamagedModelFileError(run_id, f"{artifact} differs from the SHA-256 digest recorded when it was logged")
        try:
            return load_state_dict(path)
        except UnsafeModelFileError as exc:
            raise DamagedModelFileError(run_id, f"{artifact} does not load ({getattr(exc, 'reason', exc)})") from None


def log_params_flat(params: dict[str, Any], prefix: str = "") -> None:
    import mlflow  # heavy: imported on use (module docstring)

    flat = {f"{prefix}{k}": ("" if v is None else str(v))[:6000] for k, v in params.items()}
    if flat:
        mlflow.log_params(flat)


# --- Shared, copied and damaged stores (docs/architecture.md, "MLflow") -------------------------

STATE_DICT_DIGEST_TAG = "bdtool.state_dict_sha256"
"""SHA-256 of a run's ``model/state_dict.pt``, set by ``log_model``."""
DAMAGED_TAG = "bdtool.damaged"
"""Set (to the reason) on a victim run whose model file is damaged: the cache no longer finds it."""


def state_dict_digest_tag(name: str = "model") -> str:
    return STATE_DICT_DIGEST_TAG if name == "model" else f"{STATE_DICT_DIGEST_TAG}.{name}"


def store_dir(uri: str) -> Path | None:
    """The folder of a sqlite store (its database and ``artifacts``), resolved; None otherwise."""
    db = _sqlite_path(uri)
    return None if db is None else db.expanduser().resolve().parent


def store_lock_path(uri: str) -> Path | None:
    """``<db>.lock``, next to a sqlite store's database: held while the schema is created or
    checked and while an experiment is looked up or created. None (no lock) for other stores."""
    db = _sqlite_path(uri)
    return None if db is None else db.expanduser().resolve().with_name(db.name + ".lock")


def victim_lock_path(uri: str, digest: str) -> Path | None:
    """``<store folder>/locks/victim-<hash>.lock``: held from looking a victim up to logging it,
    so that processes needing the same victim train it once. None (no lock) for other stores."""
    here = store_dir(uri)
    return None if here is None else here / "locks" / f"victim-{digest}.lock"


def _open_store(uri: str) -> None:
    """Create (or check) the store's schema: the first query makes MLflow open the store, which it
    then keeps for the process."""
    import mlflow  # heavy: imported on use (module docstring)

    mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


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


def mark_damaged(run_id: str, reason: str) -> None:
    """Tag a victim run whose model file is damaged (``DAMAGED_TAG``): the cache skips it."""
    import mlflow  # heavy: imported on use (module docstring)

    mlflow.MlflowClient().set_tag(run_id, DAMAGED_TAG, reason[:5000])


def is_store_error(exc: BaseException) -> bool:
    """An error of the tracking store itself, not of the work: MLflow's own errors, the database's
    (SQLAlchemy, sqlite3), a server that stopped answering, or an artifact write that failed
    (``ArtifactLogError``), anywhere in the exception's cause chain. A comparison that meets one
    keeps computing and reports what it could not log (core/experiment/runner.py)."""
    import sqlite3

    from mlflow.exceptions import MlflowException

    kinds: list[type] = [MlflowException, sqlite3.Error, ArtifactLogError]
    try:
        from sqlalchemy.exc import SQLAlchemyError

        kinds.append(SQLAlchemyError)
    except ImportError:  # pragma: no cover - a server-only MLflow client
        pass
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError, Timeout

        kinds.extend((RequestsConnectionError, Timeout))
    except ImportError:  # pragma: no cover
        pass
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, tuple(kinds)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class ArtifactLogError(BdtoolError):
    """An artifact (a model, a file) could not be written to the store's artifact location."""


def store_error_line(exc: BaseException) -> str:
    """One line for a store error: its type and first line."""
    return f"{type(exc).__name__}: {first_line(exc)}"
