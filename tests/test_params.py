"""``bdtool.core.params``: turning ``key=value`` strings into typed params dataclasses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from bdtool.core.errors import InvalidParameterError
from bdtool.core.params import build_params, coerce


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
