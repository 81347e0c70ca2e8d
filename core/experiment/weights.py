"""Weights a user brings (``bdtool compare --victim SOURCE``, ``bdtool defend MODEL_FILE``;
docs/own-models.md): read from a local file or an MLflow URI, digested, and fitted to an
architecture, every problem one line naming it.

Model files are untrusted input: they are read only through ``core/tracking/serialization.py``
(``.safetensors``, or a PyTorch state dict with ``weights_only=True``); nothing is unpickled.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bdtool.core.errors import BdtoolError, UnsafeModelFileError, first_line
from bdtool.core.tracking.serialization import SAFETENSORS_SUFFIX, file_sha256, load_weights

MLFLOW_SCHEMES = ("runs:/", "models:/")
WEIGHT_SUFFIXES = (SAFETENSORS_SUFFIX, ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Weights:
    """A state dict and where it came from: ``source`` as the user wrote it, ``path`` the file
    read (inside the downloaded artifact for an MLflow URI) and its ``sha256``."""

    source: str
    path: str
    sha256: str
    state: dict[str, torch.Tensor]


def _weights_in(folder: Path, source: str) -> Path | None:
    """The one weights file of a folder: ``state_dict.pt`` (what bdtool logs) first, then a single
    ``.safetensors``; None when there is neither; more than one is refused."""
    for pattern in ("state_dict.pt", f"*{SAFETENSORS_SUFFIX}"):
        found = sorted(p for p in folder.rglob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(folder)) for p in found[:5])
            raise BdtoolError(f"--victim {source} holds several weights files ({names}); name one of them")
    return None


def _read_file(path: Path, source: str, shown: str | None = None) -> Weights:
    if path.is_dir():
        inner = _weights_in(path, source)
        if inner is None:
            raise BdtoolError(f"{source}: the folder {path} holds no weights file (state_dict.pt or "
                              f"*{SAFETENSORS_SUFFIX})")
        path = inner
    if not path.is_file():
        raise BdtoolError(f"{source}: no such file")
    try:
        state = load_weights(path)
    except UnsafeModelFileError as exc:
        raise UnsafeModelFileError(f"{source}: refusing to load it: {exc.reason}" if shown is not None
                                   else str(exc)) from None
    return Weights(source, shown if shown is not None else str(path.resolve()), file_sha256(path), state)


def _from_mlflow(source: str) -> Weights:
    """``runs:/RUN_ID/PATH``, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` from the current tracking store. A
    registered model version whose artifact holds no weights file (an MLflow PyTorch model is a
    pickle, which bdtool never loads) is read from its run's ``model/state_dict.pt`` when bdtool
    logged that run (its SHA-256 digest is checked)."""
    import mlflow  # heavy: imported on use
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp))
        except (MlflowException, OSError) as exc:
            raise BdtoolError(f"--victim {source}: cannot be read from the tracking store ({first_line(exc)}); "
                              "check the run id or model name and version, and --tracking-uri") from None
        inner = _weights_in(local, source) if local.is_dir() else local
        if inner is not None:
            return _read_file(inner, f"--victim {source}", shown=f"{source.rstrip('/')}"
                              + (f"/{inner.relative_to(local)}" if local.is_dir() else ""))
    if source.startswith("models:/"):
        run_id = _model_version_run(source)
        if run_id is not None:
            from bdtool.core.tracking.models import download_state_dict
            from bdtool.core.tracking.tags import state_dict_digest_tag

            tags = mlflow.MlflowClient().get_run(run_id).data.tags
            if state_dict_digest_tag("model") in tags:
                state = download_state_dict(run_id, "model")
                return Weights(source, f"runs:/{run_id}/model/state_dict.pt", tags[state_dict_digest_tag("model")],
                               state)
    raise BdtoolError(f"--victim {source} holds no weights file (state_dict.pt or *{SAFETENSORS_SUFFIX}); bdtool "
                      "does not load pickled models: log the state dict or a .safetensors file")


def _model_version_run(source: str) -> str | None:
    import mlflow  # heavy: imported on use
    from mlflow.exceptions import MlflowException

    ref = source[len("models:/"):].rstrip("/")
    try:
        if "@" in ref:  # models:/NAME@ALIAS
            name, _, alias = ref.partition("@")
            return mlflow.MlflowClient().get_model_version_by_alias(name, alias).run_id or None
        name, _, version = ref.partition("/")
        if not name or not version.isdigit():
            return None
        return mlflow.MlflowClient().get_model_version(name, version).run_id or None
    except MlflowException:
        return None


def read_weights(source: str) -> Weights:
    """The weights of ``source``: a local file (or a folder holding one), ``runs:/RUN_ID/PATH`` or
    ``models:/NAME/VERSION`` (the tracking store must be set up first). One-line errors."""
    if source.startswith(MLFLOW_SCHEMES):
        return _from_mlflow(source)
    path = Path(source).expanduser()
    if not path.exists():
        raise BdtoolError(f"--victim {source}: no such file")
    return _read_file(path, f"--victim {source}")


def _shape(t: torch.Tensor) -> str:
    return "×".join(map(str, t.shape)) or "scalar"


def fit_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str, architecture: str) -> None:
    """Load ``state`` into ``model`` (strictly: the same names and shapes), or raise one line
    naming the first mismatches, the architecture and how to fix it."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} is {_shape(state[k])} in the file, {_shape(v)} in {architecture}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}"
                        f"{', ...' if len(unexpected) > 3 else ''})")
    problems.extend(shapes[:2])
    if not problems:  # a model scored on weights it does not hold gives numbers without a word: refused
        floating = [k for k, v in expected.items() if v.is_floating_point()]
        not_float = [f"{k} is {str(state[k].dtype).removeprefix('torch.')}" for k in floating
                     if not state[k].is_floating_point()]
        not_finite = [k for k in floating if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
        if not_float:
            problems.append(f"{len(not_float)} weight tensor(s) not floating point ({', '.join(not_float[:3])}); "
                            "a quantised model must be dequantised (float32) first")
        if not_finite:
            problems.append(f"{len(not_finite)} weight tensor(s) hold NaN or inf ({', '.join(not_finite[:3])}); "
                            "the model diverged or the file is damaged")
        if problems:
            raise BdtoolError(f"{what}: {'; '.join(problems)}")
    if problems:
        raise BdtoolError(f"{what} does not fit --model {architecture}: {'; '.join(problems)}; pass the architecture "
                          "it was trained as (bdtool list models) and the data set it was trained on")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise BdtoolError(f"{what} does not fit --model {architecture}: {(lines[1:] or lines)[0][:200]}") from None
