"""MLflow store, experiments, run tags and model logging (docs/architecture.md, "MLflow").

mlflow is imported inside the functions that use it: importing it costs about a second, which
``bdtool --help`` and ``bdtool list`` should not pay.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts under ``mlruns/artifacts``;
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` override it. Telemetry is off.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import logging
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

import bdtool
from bdtool.core.tracking.serialization import load_state_dict, save_state_dict

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
    return uri


def artifact_root_for(uri: str) -> str | None:
    """``<store folder>/artifacts`` for a sqlite store; the server's default otherwise."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.expanduser().resolve().parent / "artifacts").as_uri()


def ensure_experiment(name: str, uri: str) -> str:
    import mlflow  # heavy: imported on use (module docstring)

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
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
    """Log ``data`` (a ``LabeledTensors``) as an MLflow dataset input of the active run: name,
    a digest of its labels and of its images' bytes, their shapes as the schema, and ``source``
    (data set, split, n, seed, ...) as the source's tags. The images themselves are not logged."""
    import hashlib

    import mlflow  # heavy: imported on use (module docstring)
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
    dataset = MetaDataset(CodeDatasetSource(tags=tags), name=name, digest=digest.hexdigest()[:8], schema=schema)
    mlflow.log_input(dataset, context=context)


@contextmanager
def tracked_run(on_error: Callable[[BaseException], None] | None = None, **start_run_kwargs: Any) -> Iterator[Any]:
    """``mlflow.start_run`` that always ends the run with the right status: FINISHED, FAILED on an
    exception, KILLED on Ctrl-C; the exception propagates. ``on_error(exc)`` runs inside the run
    before it is ended FAILED (to tag it with the error). The one way bdtool opens a run."""
    import mlflow  # heavy: imported on use (module docstring)

    run = mlflow.start_run(**start_run_kwargs)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException as exc:
        try:
            if on_error is not None:
                on_error(exc)
        finally:
            mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def standard_tags(device: torch.device) -> dict[str, str]:
    tags = {"bdtool.version": bdtool.__version__, "bdtool.device": str(device),
            "bdtool.torch": torch.__version__}
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
    mlflow.pytorch.log_model(
        model,
        name=f"{name}-mlflow",
        input_example=example[:2].cpu().numpy(),  # batch of 2: a batch of 1 would fix the batch dim
        pip_requirements=pip_requirements(),
    )


def download_state_dict(run_id: str, name: str = "model") -> dict[str, torch.Tensor]:
    import mlflow  # heavy: imported on use (module docstring)

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{name}/state_dict.pt", dst_path=tmp)
        return load_state_dict(local)


def log_params_flat(params: dict[str, Any], prefix: str = "") -> None:
    import mlflow  # heavy: imported on use (module docstring)

    flat = {f"{prefix}{k}": ("" if v is None else str(v))[:6000] for k, v in params.items()}
    if flat:
        mlflow.log_params(flat)
