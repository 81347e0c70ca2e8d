"""Logging a model to a run (a plain state dict with its SHA-256, and a LoggedModel pointing at it) and loading
it back with ``weights_only=True``; a damaged cached victim is tagged so (docs/architecture.md,
"Victims")."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bdtool.core.errors import UnsafeModelFileError, first_line
from bdtool.core.tracking.locations import local_artifact_dir
from bdtool.core.tracking.serialization import DamagedModelFileError, file_sha256, load_state_dict, save_state_dict
from bdtool.core.tracking.tags import DAMAGED_TAG, WEIGHTS_SHA256_TAG, WEIGHTS_TAG, state_dict_digest_tag


def log_model(model: nn.Module, example: torch.Tensor, name: str = "model", logged_name: str | None = None,
              tags: dict[str, Any] | None = None) -> str | None:
    """Log ``model``'s weights once: ``<name>/state_dict.pt`` in the active run (what bdtool
    reloads with ``weights_only=True``, digest-checked), and a LoggedModel that points at it.

    The LoggedModel (called ``logged_name``, default ``<name>-mlflow``) is an *external* one
    (``mlflow.create_external_model``): it holds no second copy of the weights, only its tags
    (``tags`` plus ``bdtool.weights``, the URI of the state dict, and its SHA-256), its link to the
    run, and the metrics logged against its id (returned, for ``mlflow.log_metrics(model_id=...)``).
    Before issue 24 each run also stored an MLflow PyTorch model: a pickle of the whole module,
    which bdtool never loads, doubling every run's artifacts (docs/ui.md, "Models")."""
    import mlflow  # heavy: imported on use (core/tracking/store.py)

    model = model.eval().cpu()
    run = mlflow.active_run()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_state_dict(model, Path(tmp) / "state_dict.pt")
        digest = file_sha256(path)
        mlflow.log_artifact(str(path), artifact_path=name)
        # Its digest, checked when it is loaded again (download_state_dict): a damaged cache is found.
        mlflow.set_tag(state_dict_digest_tag(name), digest)
    if run is None:
        return None
    shown = {k: str(v) for k, v in (tags or {}).items() if v is not None}
    shown.update({WEIGHTS_TAG: f"runs:/{run.info.run_id}/{name}/state_dict.pt", WEIGHTS_SHA256_TAG: digest})
    logged = mlflow.create_external_model(
        name=logged_name or f"{name}-mlflow", source_run_id=run.info.run_id, tags=shown,
        params={"architecture": type(model).__name__, "parameters": str(sum(p.numel() for p in model.parameters())),
                "input_shape": "x".join(map(str, example.shape[1:]))},
        model_type="pytorch-state-dict")
    return logged.model_id


def label_slug(label: str) -> str:
    """A row label as a name MLflow takes anywhere (metric keys, LoggedModel names): lower case,
    each run of characters other than letters, digits and ``-`` made one ``_``
    (``Ours-proj (none)`` -> ``ours-proj_none``)."""
    import re

    return re.sub(r"[^a-z0-9-]+", "_", label.lower()).strip("_") or "row"


def logged_model_name(row_label: str, n: int, seed: int) -> str:
    """A defended model's LoggedModel name: its row, n and seed (``ours-proj_none-n50-seed0``), in the
    characters MLflow allows in a LoggedModel name (no ``/ : . % " '``)."""
    return f"{label_slug(row_label)}-n{n}-seed{seed}"


def download_state_dict(run_id: str, name: str = "model") -> dict[str, torch.Tensor]:
    """The ``<name>/state_dict.pt`` logged by ``log_model`` in run ``run_id``. A run of a sqlite
    store is read in place, from the current store's ``artifacts`` folder when the store was copied
    or moved (``local_artifact_dir``). Raises ``DamagedModelFileError`` (one line naming the run)
    when the file is missing, differs from the SHA-256 digest recorded when it was logged, or is
    not a plain tensor state dict."""
    import mlflow  # heavy: imported on use (core/tracking/store.py)
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


def mark_damaged(run_id: str, reason: str) -> None:
    """Tag a victim run whose model file is damaged (``DAMAGED_TAG``): the cache skips it."""
    import mlflow  # heavy: imported on use (core/tracking/store.py)

    mlflow.MlflowClient().set_tag(run_id, DAMAGED_TAG, reason[:5000])
