"""Safe model files: plain state dicts only. Models are untrusted input in this field, so we never
unpickle arbitrary objects (docs/architecture.md, "MLflow"): ``torch.load(..., weights_only=True)``
for PyTorch files, and ``.safetensors`` files (the ``safetensors`` library: a JSON header and raw
tensor bytes, no code at all) for the models a user brings or bdtool writes (``bdtool defend``).
Every refusal is an ``UnsafeModelFileError`` with one line and a ``reason`` without the path."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import nn

from bdtool.core.errors import BdtoolError, UnsafeModelFileError, first_line


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


SAFETENSORS_SUFFIX = ".safetensors"


def _refuse(path: Path, reason: str, hint: str = "") -> UnsafeModelFileError:
    error = UnsafeModelFileError(f"refusing to load {path}: {reason}" + (f"; {hint}" if hint else ""))
    error.reason = reason  # without the path (a temporary file's)
    return error


def _check_tensors(path: Path, state: object) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _refuse(path, "not a dict of tensors", "save the weights with torch.save(model.state_dict()) or "
                                                       "safetensors.torch.save_file")
    return dict(state)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict, refusing anything that would need unpickling of arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise UnsafeModelFileError(f"model file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: the unpickler can raise anything
        # (garbled files were seen to raise IndexError, KeyError, struct.error, UnicodeDecodeError, ...)
        first = first_line(exc, 160)
        text = str(exc)
        if "weights only load failed" in text.lower() or "weightsunpickler error" in text.lower():
            named = re.search(r"GLOBAL ([\w.]+)", text)
            detail = next((line.strip() for line in text.splitlines()
                           if line.strip().startswith(("Unsupported", "Trying to"))), "")
            what = f"it names {named.group(1)}" if named else (detail[:120] or "not a state dict")
            raise _refuse(path, f"it would need unpickling of arbitrary objects ({what})",
                          "bdtool never unpickles model files, save the model with torch.save(model.state_dict()) "
                          "or as .safetensors") from None
        raise _refuse(path, f"not a plain tensor state dict: {first}",
                      "the file is damaged (truncated?) or not a PyTorch file; bdtool never unpickles model files, "
                      "save the model with torch.save(model.state_dict())") from None
    return _check_tensors(path, state)


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` file (no code can run: the format holds only a header and bytes)."""
    from safetensors import SafetensorError  # imported on use, like the other heavy libraries
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UnsafeModelFileError(f"model file {path} does not exist")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _refuse(path, f"not a valid safetensors file: {first_line(exc, 160)}",
                      "the file is damaged (truncated?) or not a safetensors file") from None
    return _check_tensors(path, state)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights in ``path``: a ``.safetensors`` file, or a PyTorch state dict loaded with
    ``weights_only=True`` (any other suffix: ``.pt``, ``.pth``, ``.bin``). Never unpickles."""
    path = Path(path)
    return load_safetensors(path) if path.suffix.lower() == SAFETENSORS_SUFFIX else load_state_dict(path)


def save_safetensors(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s state dict as ``path`` (``.safetensors``) atomically: a temporary file in
    the same folder, then ``os.replace`` (a symlink at ``path`` is replaced, never written through)."""
    from safetensors.torch import save_file  # imported on use

    path = Path(path)
    # safetensors refuses tensors that share memory or are not contiguous: each is copied.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
