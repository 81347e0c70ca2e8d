"""Safe model files: plain state dicts only. Models are untrusted input in this field, so we never
unpickle arbitrary objects (docs/architecture.md, "MLflow"): ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from bdtool.core.errors import BdtoolError, UnsafeModelFileError


class DamagedModelFileError(BdtoolError):
    """A logged model file that is missing, differs from the digest recorded when it was logged,
    or does not load: ``run_id`` and ``reason`` (one line)."""

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"the model file of run {run_id} is damaged: {reason}")
        self.run_id, self.reason = run_id, reason


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_state_dict(model: nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)  # no half-written model file is ever visible under its final name
    return path


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict, refusing anything that would need unpickling of arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UnsafeModelFileError(f"model file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: the unpickler can raise anything
        # (garbled files were seen to raise IndexError, KeyError, struct.error, UnicodeDecodeError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        error = UnsafeModelFileError(
            f"refusing to load {path}: it is not a plain tensor state dict ({first[:160]}); "
            "bdtool never unpickles model files, save the model with torch.save(model.state_dict())"
        )
        error.reason = f"not a plain tensor state dict: {first[:160]}"  # without the path (a temporary file's)
        raise error from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        error = UnsafeModelFileError(f"refusing to load {path}: expected a dict of tensors (a state dict)")
        error.reason = "not a dict of tensors"
        raise error
    return state
