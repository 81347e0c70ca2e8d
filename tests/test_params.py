"""``bdtool.core.params``: turning ``key=value`` strings into typed params dataclasses."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Literal, Optional, Union, get_args, get_origin

import pytest

from bdtool.core.errors import InvalidParameterError
from bdtool.core.params import INT_LIMIT, Range, build_params, coerce, declared_range, param
from bdtool.plugins import get_registries


@pytest.mark.parametrize("raw, expected", [
    ("true", True), ("True", True), ("1", True), ("yes", True), ("on", True), (" ON ", True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False), ("off", False),
    (True, True), (False, False),
])
def test_bool_words(raw, expected):
    assert coerce(raw, bool, "x") is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "", "t"])
def test_other_bool_words_are_refused(raw):
    with pytest.raises(InvalidParameterError, match="is not a boolean"):
        coerce(raw, bool, "opt: flag")


@pytest.mark.parametrize("raw, expected", [("3", 3), ("3.0", 3), ("-2", -2), ("1e3", 1000), (7, 7), (4.0, 4)])
def test_ints_accept_integral_values(raw, expected):
    value = coerce(raw, int, "x")
    assert value == expected and type(value) is int


@pytest.mark.parametrize("raw", ["3.5", "abc", "", True, 2.25])
def test_non_integer_ints_are_refused(raw):
    with pytest.raises(InvalidParameterError, match="opt: k=.* is not an integer"):
        coerce(raw, int, "opt: k")


def test_floats():
    assert coerce("0.25", float, "x") == 0.25
    assert coerce("1e-3", float, "x") == pytest.approx(1e-3)
    assert type(coerce("2", float, "x")) is float
    with pytest.raises(InvalidParameterError, match="is not a number"):
        coerce("abc", float, "x")
    with pytest.raises(InvalidParameterError, match="is not a number"):
        coerce(True, float, "x")


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", float("nan"), math.inf])
def test_nan_and_inf_floats_are_refused(raw):
    with pytest.raises(InvalidParameterError, match="must be a finite number"):
        coerce(raw, float, "opt: lr")


def test_literal_choices():
    kind = Literal["fixed", "update", "auto"]
    assert coerce("update", kind, "x") == "update"
    with pytest.raises(InvalidParameterError, match="is not one of fixed, update, auto"):
        coerce("frozen", kind, "x")
    numbers = Literal[1, 2]
    assert coerce("2", numbers, "x") == 2 and type(coerce("2", numbers, "x")) is int


def test_optional():
    assert coerce("none", Optional[int], "x") is None
    assert coerce("null", Optional[int], "x") is None
    assert coerce("", Optional[int], "x") is None
    assert coerce(None, Optional[float], "x") is None
    assert coerce("4", Optional[int], "x") == 4
    assert coerce("4", int | None, "x") == 4
    with pytest.raises(InvalidParameterError, match="is not an integer"):
        coerce("4.5", Optional[int], "x")


def test_tuples_with_plus():
    assert coerce("fc1+fc2", tuple[str, ...], "x") == ("fc1", "fc2")
    assert coerce("1+2+3", tuple[int, ...], "x") == (1, 2, 3)
    assert coerce("0.5", tuple[float, ...], "x") == (0.5,)
    assert coerce("a + b", tuple[str, ...], "x") == ("a", "b")
    assert coerce(["1", "2"], tuple[int, ...], "x") == (1, 2)
    assert coerce("", tuple[str, ...], "x") == ()
    with pytest.raises(InvalidParameterError, match="is not an integer"):
        coerce("1+x", tuple[int, ...], "x")


@dataclass
class DemoParams:
    epochs: int = 1
    lr: float = 0.1
    layers: tuple[str, ...] = ()
    bn: Literal["fixed", "update"] = "fixed"
    limit: Optional[int] = None
    verbose: bool = False

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError("lr must be > 0")


def test_build_params_types_every_field():
    params = build_params(DemoParams, {"epochs": "3.0", "lr": "0.5", "layers": "a+b", "bn": "update",
                                       "limit": "7", "verbose": "yes"}, "demo")
    assert params == DemoParams(epochs=3, lr=0.5, layers=("a", "b"), bn="update", limit=7, verbose=True)


def test_build_params_with_no_values_is_the_defaults():
    assert build_params(DemoParams, {}, "demo") == DemoParams()


def test_unknown_key_has_a_did_you_mean_hint_and_lists_known():
    with pytest.raises(InvalidParameterError) as info:
        build_params(DemoParams, {"epoch": "2"}, "demo")
    message = str(info.value)
    assert message.startswith("demo: unknown parameter 'epoch'")
    assert "did you mean 'epochs'?" in message
    assert "Known: epochs, lr, layers, bn, limit, verbose" in message


def test_unknown_key_without_close_match_has_no_hint():
    with pytest.raises(InvalidParameterError) as info:
        build_params(DemoParams, {"zzzzzz": "2"}, "demo")
    assert "did you mean" not in str(info.value)


def test_bad_value_names_owner_and_key():
    with pytest.raises(InvalidParameterError, match="demo: epochs='x' is not an integer"):
        build_params(DemoParams, {"epochs": "x"}, "demo")


def test_validate_value_error_becomes_invalid_parameter_error():
    with pytest.raises(InvalidParameterError, match="^demo: lr must be > 0$"):
        build_params(DemoParams, {"lr": "-1"}, "demo")


def test_parameter_errors_name_the_owner_and_the_key():
    @dataclass
    class P:
        lr: float = 0.1

    with pytest.raises(InvalidParameterError) as unknown:
        build_params(P, {"lrr": "1"}, owner="nad")
    assert (unknown.value.owner, unknown.value.key) == ("nad", "lrr")
    with pytest.raises(InvalidParameterError) as wrong:
        build_params(P, {"lr": "fast"}, owner="nad")
    assert (wrong.value.owner, wrong.value.key) == ("nad", "lr")


# --------------------------------------------------------------------------- declared ranges (param)


@dataclass
class RangedParams:
    count: int = param(1, ge=1)
    rate: float = param(0.5, gt=0, le=1)
    share: float = param(0.0, ge=0, lt=1)
    weights: tuple[float, ...] = param((1.0,), ge=0)
    rank: int | Literal["auto"] = param("auto", ge=0)
    free: float = param(0.0)
    unranged: int = 0


@pytest.mark.parametrize("key, value, message", [
    ("count", "0", "count must be >= 1, got 0"),                    # ge
    ("rate", "0", r"rate must be in \(0, 1\], got 0.0"),           # gt
    ("rate", "1.5", r"rate must be in \(0, 1\], got 1.5"),         # le
    ("share", "1", r"share must be in \[0, 1\), got 1.0"),         # lt
    ("share", "-0.1", r"share must be in \[0, 1\), got -0.1"),     # ge (float)
    ("rank", "-1", "rank must be >= 0, got -1"),                    # int | Literal: the number
])
def test_a_value_outside_its_declared_range_is_refused_naming_field_and_range(key, value, message):
    with pytest.raises(InvalidParameterError, match=f"^demo: {message}$"):
        build_params(RangedParams, {key: value}, "demo")


@pytest.mark.parametrize("values", [
    {"count": "1"}, {"rate": "1"}, {"rate": "1e-9"}, {"share": "0"}, {"share": "0.999"}, {"rank": "auto"},
    {"rank": "0"}, {"free": "-1e30"}, {"unranged": "-5"},
])
def test_values_on_the_inclusive_side_of_each_bound_are_accepted(values):
    build_params(RangedParams, values, "demo")


@pytest.mark.parametrize("bounds, described", [
    (Range(ge=1), ">= 1"), (Range(gt=0), "> 0"), (Range(le=1), "<= 1"), (Range(lt=0), "< 0"),
    (Range(gt=0, le=1), "in (0, 1]"), (Range(ge=0, lt=1), "in [0, 1)"), (Range(ge=0.5, le=2.5), "in [0.5, 2.5]"),
    (Range(), "any number"),
])
def test_range_descriptions(bounds, described):
    assert bounds.describe() == described


def test_one_sided_bounds_refuse_exactly_their_boundary_violation():
    assert not Range(ge=1).holds(0.999) and Range(ge=1).holds(1)
    assert not Range(gt=0).holds(0) and Range(gt=0).holds(1e-12)
    assert not Range(le=1).holds(1.0001) and Range(le=1).holds(1)
    assert not Range(lt=1).holds(1) and Range(lt=1).holds(0.9999)


@dataclass
class ChildParams(RangedParams):
    count: int = 5  # a new default only: the parent's range (>= 1) still holds
    rate: float = 0.25


def test_a_subclass_that_redeclares_only_a_default_keeps_the_parents_range():
    assert ChildParams().count == 5 and declared_range(ChildParams, "count") == Range(ge=1)
    with pytest.raises(InvalidParameterError, match="^demo: count must be >= 1, got 0$"):
        build_params(ChildParams, {"count": "0"}, "demo")
    with pytest.raises(InvalidParameterError, match=r"^demo: rate must be in \(0, 1\], got 2.0$"):
        build_params(ChildParams, {"rate": "2"}, "demo")
    assert build_params(ChildParams, {}, "demo") == ChildParams()


def test_each_item_of_a_tuple_is_checked():
    assert build_params(RangedParams, {"weights": "0+1+2.5"}, "demo").weights == (0.0, 1.0, 2.5)
    with pytest.raises(InvalidParameterError, match="^demo: weights must be >= 0, got -1.0$"):
        build_params(RangedParams, {"weights": "1+-1+2"}, "demo")


@pytest.mark.parametrize("value", [str(INT_LIMIT + 1), str(-INT_LIMIT - 1), "1e20"])
def test_an_integer_beyond_the_limit_is_refused_even_without_a_declared_range(value):
    with pytest.raises(InvalidParameterError, match=rf"^demo: unranged={int(float(value))} is too large"):
        build_params(RangedParams, {"unranged": value}, "demo")
    assert build_params(RangedParams, {"unranged": str(INT_LIMIT)}, "demo").unranged == INT_LIMIT


def _is_number(annotation) -> bool:
    """int or float (not bool), an Optional or union holding one (``int | Literal['auto']``), or a
    tuple/list of them."""
    if annotation in (int, float):
        return True
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_number(a) for a in get_args(annotation))
    if origin in (tuple, list):
        return any(_is_number(a) for a in get_args(annotation) if a is not Ellipsis)
    return False


# Numeric fields with no bound at all that are deliberately not declared with ``param``:
# {(kind, component name, field): reason}. Empty: a number that may be anything finite is still
# declared, as ``param(default)`` (e.g. ours' lam, alpha and beta).
UNBOUNDED: dict[tuple[str, str, str], str] = {}


def _components():
    regs = get_registries()
    return [pytest.param(kind, entry.name, entry.obj, id=f"{kind}:{entry.name}")
            for kind in ("defenses", "attacks", "repairs") for entry in regs.registry(kind)]


@pytest.mark.parametrize("kind, name, component", _components())
def test_every_number_of_every_registered_component_declares_its_range(kind, name, component):
    params_cls = component.Params
    hints = typing.get_type_hints(params_cls)
    missing = [f.name for f in dataclasses.fields(params_cls)
               if _is_number(hints[f.name]) and declared_range(params_cls, f.name) is None
               and (kind, name, f.name) not in UNBOUNDED]
    assert not missing, f"{kind} {name}: declare the range of {', '.join(missing)} with param(default, ge=..., ...)"
    for f in dataclasses.fields(params_cls):  # and every default lies in its declared range
        bounds = declared_range(params_cls, f.name)
        value = getattr(params_cls(), f.name)
        items = value if isinstance(value, tuple) else (value,)
        assert bounds is None or all(bounds.holds(v) for v in items if isinstance(v, (int, float))), (name, f.name)


@pytest.mark.parametrize("text, expected", [
    ("a=1,b=x", {"a": "1", "b": "x"}), (" a = 1 , ,b=", {"a": "1", "b": ""}), ("", {}), ("k=v=w", {"k": "v=w"}),
])
def test_the_one_key_value_parser(text, expected):
    from bdtool.core.params import parse_key_values

    assert parse_key_values(text, "opt") == expected


@pytest.mark.parametrize("text, says", [("a", "'a' is not key=value"), ("=1", "'=1' is not key=value"),
                                        ("a=1,a=2", "'a' is given twice")])
def test_the_key_value_parser_refuses_in_one_line(text, says):
    from bdtool.core.params import parse_key_values

    with pytest.raises(InvalidParameterError, match=f"^opt: {says}$"):
        parse_key_values(text, "opt")


@pytest.mark.parametrize("args", [["--attack", "badnets:size"], ["--attack", "badnets:size=2,size=3"],
                                  ["--defense", "ours:lam"], ["--dataset", "folder:/nonexistent:size=2,size=3"]])
def test_every_key_value_list_of_the_cli_goes_through_it(args):
    from click.testing import CliRunner

    from bdtool.cli import main

    result = CliRunner().invoke(main, ["compare", "--dry-run", *args])
    assert result.exit_code == 2 and ("is not key=value" in result.stderr or "given twice" in result.stderr), \
        result.output
