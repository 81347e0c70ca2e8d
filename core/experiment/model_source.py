"""Where a model's architecture comes from: a registered name (``small-cnn``, ``resnet18``, ...)
or any importable callable that returns an ``nn.Module`` (``--model MODULE:CALLABLE``, with
``--model-arg key=value`` for its arguments; docs/own-models.md, "Any architecture").

``MODULE`` is a dotted module name (``torchvision.models``, a user's ``mynets``, found on
``sys.path`` and in the current folder) or a ``.py`` file (``nets/mine.py:Net``). Values of
``--model-arg`` are Python literals where they parse as one (``10``, ``0.5``, ``True``, ``None``,
``(3, 3)``), else strings. The callable is called with exactly those arguments; bdtool then runs
one forward pass of a zero batch shaped like the data set's images, so a model that does not take
those images, or that gives another number of outputs than there are classes, is one line naming
what to change before any training or defense starts.

Importing a module runs its code: ``--model`` names the user's own code, as a plugin would. Under
``--executor ray`` the module must be importable on every worker (installed, or on PYTHONPATH).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from bdtool.core.errors import BdtoolError, first_line

ModelArgs = tuple[tuple[str, str], ...]
"""``--model-arg`` pairs as the user wrote them (key, value text), sorted by key."""


def is_callable_ref(name: str) -> bool:
    """True for ``MODULE:CALLABLE`` (a registered model name holds no ``:``)."""
    return ":" in name


def parse_model_args(items: Iterable[str]) -> ModelArgs:
    """``key=value`` strings (one per ``--model-arg``) -> sorted pairs; one line for a malformed
    one or a key given twice."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise BdtoolError(f"--model-arg '{item}' is not key=value with a Python name as key "
                              "(e.g. --model-arg num_classes=10)")
        if key in pairs:
            raise BdtoolError(f"--model-arg {key} is given twice; give it once")
        pairs[key] = value.strip()
    return tuple(sorted(pairs.items()))


def model_params(args: ModelArgs, normalize: str | None) -> dict[str, str]:
    """``model_args`` and ``normalize`` as MLflow params, each only where given (so the params of
    runs before them read the same)."""
    out: dict[str, str] = {}
    if args:
        out["model_args"] = ",".join(f"{k}={v}" for k, v in args)
    if normalize:
        out["normalize"] = normalize
    return out


def model_arg_values(args: ModelArgs) -> dict[str, Any]:
    """The keyword arguments: each value a Python literal where it parses as one, else its text."""
    values: dict[str, Any] = {}
    for key, text in args:
        try:
            values[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            values[key] = text
    return values


def _import_module(module: str, ref: str) -> Any:
    if module.endswith(".py"):
        path = Path(module).expanduser()
        if not path.is_file():
            raise BdtoolError(f"--model {ref}: no such file {path}")
        name = f"bdtool_user_model_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:  # a comparison builds the model several times: the file runs once, as an import does
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise BdtoolError(f"--model {ref}: {path} cannot be imported as a Python module")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        try:
            spec.loader.exec_module(loaded)
        except Exception as exc:  # the user's code: whatever it raises is one line
            sys.modules.pop(name, None)
            raise BdtoolError(f"--model {ref}: importing {path} failed: {type(exc).__name__}: {first_line(exc)}") from None
        return loaded
    cwd = os.getcwd()
    if cwd not in sys.path:  # a console script's sys.path lacks the current folder; appended, never shadowing
        sys.path.append(cwd)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise BdtoolError(f"--model {ref}: no module named '{exc.name or module}'; install it, run bdtool from the "
                          "folder that holds it, add it to PYTHONPATH or give a file (--model path/to/file.py:NAME)") from None
    except Exception as exc:  # the user's code
        raise BdtoolError(f"--model {ref}: importing {module} failed: {type(exc).__name__}: {first_line(exc)}") from None


def resolve_callable(ref: str) -> Callable[..., Any]:
    """The callable ``MODULE:NAME`` (``NAME`` may be dotted: ``pkg.mod:Outer.build``)."""
    module, _, attr = ref.rpartition(":")
    if not module or not attr:
        raise BdtoolError(f"--model {ref}: give MODULE:CALLABLE (e.g. torchvision.models:resnet18 or mynets:Net)")
    target: Any = _import_module(module, ref)
    for part in attr.split("."):
        if not hasattr(target, part):
            names = sorted(n for n in dir(target) if not n.startswith("_") and callable(getattr(target, n, None)))
            hint = f" (it has {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})" if names else ""
            raise BdtoolError(f"--model {ref}: {module} has no '{attr}'{hint}")
        target = getattr(target, part)
    if not callable(target):
        raise BdtoolError(f"--model {ref}: {attr} is a {type(target).__name__}, not a callable that returns a model")
    return target


def _signature(fn: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def build_callable_model(ref: str, args: ModelArgs, channels: int, image_shape: tuple[int, int],
                         num_classes: int) -> nn.Module:
    """Call ``ref`` with ``args`` and check the module it returns on a zero batch of the data
    set's image shape (module docstring); every problem one line."""
    fn = resolve_callable(ref)
    kwargs = model_arg_values(args)
    try:
        model = fn(**kwargs)
    except TypeError as exc:
        raise BdtoolError(f"--model {ref}: calling it with {kwargs or 'no arguments'} failed ({first_line(exc)}); "
                          f"its signature is {_signature(fn)}: set its arguments with --model-arg key=value") from None
    except Exception as exc:  # the user's code
        raise BdtoolError(f"--model {ref}: building the model failed: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise BdtoolError(f"--model {ref} returned a {type(model).__name__}, not a torch.nn.Module")
    height, width = image_shape
    shape = f"1×{channels}×{height}×{width}"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, channels, height, width))
    except Exception as exc:
        raise BdtoolError(f"--model {ref} fails on a {shape} batch (the data set's images: {channels} channel(s), "
                          f"{height}×{width}): {type(exc).__name__}: {first_line(exc)}; build it for these "
                          "images (--model-arg) or use the data set it was made for") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        what = f"a {tuple(out.shape)} tensor" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise BdtoolError(f"--model {ref} returns {what} for a {shape} batch; bdtool needs logits shaped "
                          "(batch, classes)")
    if out.shape[1] != num_classes:
        raise BdtoolError(f"--model {ref} gives {out.shape[1]} outputs; the data set has {num_classes} classes: "
                          f"set it with --model-arg (e.g. --model-arg num_classes={num_classes})")
    return model
