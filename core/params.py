"""Typed parameter dataclasses built from ``key=value`` strings (the CLI's ``NAME:k=v,...``).

Lists are written with ``+`` between items (``layers=fc1+fc2``) because ``,`` separates keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin

from bdtool.core.errors import InvalidParameterError

P = TypeVar("P")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def field_names(params_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(params_cls)]


def build_params(params_cls: type[P], values: Mapping[str, Any], owner: str) -> P:
    """Instantiate ``params_cls`` from raw values (strings from the CLI, or typed values).

    Unknown keys and values of the wrong type are :class:`InvalidParameterError` naming the owner,
    the key and what is accepted.
    """
    hints = typing.get_type_hints(params_cls)
    known = field_names(params_cls)
    kwargs: dict[str, Any] = {}
    for key, raw in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "."
            raise InvalidParameterError(
                f"{owner}: unknown parameter '{key}'{hint} Known: {', '.join(known) or '(none)'}",
                owner=owner, key=key,
            )
        try:
            kwargs[key] = coerce(raw, hints[key], f"{owner}: {key}")
        except InvalidParameterError as exc:
            raise InvalidParameterError(str(exc), owner=owner, key=key) from None
    try:
        params = params_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"{owner}: {exc}", owner=owner) from None
    validate = getattr(params, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise InvalidParameterError(f"{owner}: {exc}", owner=owner) from None
    return params


def coerce(raw: Any, annotation: Any, what: str) -> Any:
    """Turn ``raw`` into a value of ``annotation`` (int, float, bool, str, Literal, Optional, tuple)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        errors = []
        for option in options:
            try:
                return coerce(raw, option, what)
            except InvalidParameterError as exc:
                errors.append(str(exc))
        raise InvalidParameterError(errors[0] if len(errors) == 1 else f"{what}={raw!r} is not valid")
    if origin is Literal:
        choices = get_args(annotation)
        for choice in choices:
            if raw == choice or str(raw) == str(choice):
                return choice
        raise InvalidParameterError(f"{what}={raw!r} is not one of {', '.join(map(str, choices))}")
    if origin in (tuple, list):
        args = get_args(annotation)
        item_type = args[0] if args else str
        items = raw.split("+") if isinstance(raw, str) else list(raw)
        items = [coerce(item.strip() if isinstance(item, str) else item, item_type, what) for item in items if item != ""]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise InvalidParameterError(f"{what}={raw!r} is not a boolean (use true or false)")
    if annotation is int:
        if isinstance(raw, bool):
            raise InvalidParameterError(f"{what}={raw!r} is not an integer")
        try:
            value = float(raw) if not isinstance(raw, int) else raw
        except (TypeError, ValueError):
            raise InvalidParameterError(f"{what}={raw!r} is not an integer") from None
        if isinstance(value, float) and not value.is_integer():
            raise InvalidParameterError(f"{what}={raw!r} is not an integer")
        return int(value)
    if annotation is float:
        if isinstance(raw, bool):
            raise InvalidParameterError(f"{what}={raw!r} is not a number")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"{what}={raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidParameterError(f"{what}={raw!r} must be a finite number")
        return value
    if annotation is str:
        return str(raw)
    return raw


def params_to_dict(params: Any) -> dict[str, Any]:
    """Flat, loggable view of a params dataclass (tuples joined with '+')."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, (tuple, list)):
            value = "+".join(map(str, value))
        out[f.name] = value
    return out
