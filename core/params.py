"""Typed parameter dataclasses built from ``key=value`` strings (the CLI's ``NAME:k=v,...``).

Lists are written with ``+`` between items (``layers=fc1+fc2``) because ``,`` separates keys.

Every number's range is declared beside its field, ``lr: float = param(0.05, gt=0)``, and checked
here once, by :func:`check_ranges`, for built-in and third-party params alike; ``validate()`` is
left with what concerns several fields at once. A subclass that re-declares only a default keeps
its parent's range (the ranges are looked up along the class's MRO). Every integer, declared or
not, lies within ``INT_LIMIT``: the libraries behind bdtool (torch's and numpy's seeds, tensor
sizes) overflow beyond it with a traceback (docs/reliability.md, "Inputs").
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping, TypeVar, Union, get_args, get_origin

from bdtool.core.errors import InvalidParameterError

P = TypeVar("P")

INT_LIMIT = 2**31 - 1
"""Largest magnitude of any integer parameter (numpy seeds stop at 2^32 - 1, C ints at 2^31 - 1)."""

RANGE_KEY = "bdtool_range"


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field; ``None`` is unbounded on that side."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        """``in (0, 1]``, ``>= 1``, ``> 0`` ..."""
        low = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        high = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if self.ge is not None else '>'} {low[1:]}"
        if high:
            return f"{'<=' if self.le is not None else '<'} {high[:-1]}"
        return "any number"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def param(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None) -> Any:
    """A dataclass field with a default and a declared range (``steps: int = param(40, ge=1)``).
    For a tuple the range holds for each item; for ``int | Literal['auto']`` for the number."""
    return dataclasses.field(default=default, metadata={RANGE_KEY: Range(ge=ge, gt=gt, le=le, lt=lt)})


def declared_range(params_cls: type, name: str) -> Range | None:
    """The range declared for field ``name`` by ``params_cls`` or the nearest base that declares it."""
    for klass in params_cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and RANGE_KEY in f.metadata:
            return f.metadata[RANGE_KEY]
    return None


def check_ranges(params: Any) -> None:
    """ValueError naming the first field whose value (or one of whose items) is outside its range,
    or an integer beyond ``INT_LIMIT``."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        bounds = declared_range(type(params), f.name)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if isinstance(item, int) and abs(item) > INT_LIMIT:
                raise ValueError(f"{f.name}={item} is too large (integers are within ±{INT_LIMIT})")
            if bounds is not None and not bounds.holds(item):
                raise ValueError(f"{f.name} must be {bounds.describe()}, got {item}")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_key_values(text: str, what: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict (keys and values stripped; empty parts skipped): the one parser of the
    ``k=v`` lists of ``--defense NAME:...``, ``--attack NAME:...``, ``folder:PATH:...`` and triggers.
    A part without ``=``, an empty key or a key given twice is :class:`InvalidParameterError`
    naming ``what``."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidParameterError(f"{what}: '{part}' is not key=value")
        if key.strip() in out:
            raise InvalidParameterError(f"{what}: '{key.strip()}' is given twice")
        out[key.strip()] = value.strip()
    return out


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
    try:
        check_ranges(params)
    except ValueError as exc:
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
