"""Row parsing (core/experiment/rows.py) end to end against the real, entry-point-loaded
registries: ``NAME[:key=value,...]`` with the reserved keys ``bdk`` and ``repair``
(``knowledge=``: tests/test_threat_models.py). These tests check the parsed fields (``bdk``,
``repair_cls``, ``repair_lr``, ``defense_cls``) rather than label strings.
"""

from __future__ import annotations

import pytest

from bdtool.core.errors import InvalidParameterError, UnknownNameError
from bdtool.core.experiment.rows import default_row_texts, parse_row, parse_rows
from bdtool.core.interfaces import Knowledge
from bdtool.plugins import get_registries


@pytest.fixture(scope="module")
def regs():
    return get_registries()


def default_knowledge(bdk: bool) -> Knowledge:
    """The --knowledge default: trigger (BDK) or none."""
    return Knowledge.TRIGGER if bdk else Knowledge.NONE


def parse(text: str, regs, bdk: bool = True):
    return parse_row(text, default_knowledge(bdk), regs)


# --------------------------------------------------------------------------- repair=


def test_repair_lr_picks_the_default_repair(regs):
    row = parse("ours:repair=0.01", regs)
    assert row.defense_cls is regs.defenses.get("ours")
    assert row.repair_cls is regs.repairs.get("finetune") and row.repair_cls.is_default
    assert row.repair_cls.name == "finetune"
    assert row.repair_lr == pytest.approx(0.01)
    assert row.defense_options == {}  # repair is reserved, not a defense parameter
    repair = row.make_repair()
    assert repair.params.lr == pytest.approx(0.01)


def test_repair_by_name(regs):
    row = parse("ours:repair=finetune:0.001", regs)
    assert row.repair_cls.name == "finetune"
    assert row.repair_lr == pytest.approx(0.001)
    assert row.make_repair().params.lr == pytest.approx(0.001)


def test_no_repair_without_the_key_or_with_none(regs):
    for text in ("ours", "ours:repair=none", "ours:repair=off"):
        row = parse(text, regs)
        assert row.repair_cls is None and row.repair_lr is None, text
        with pytest.raises(ValueError):
            row.make_repair()


def test_other_learning_rates_get_a_distinct_label(regs):
    default = parse("ours:repair=0.01", regs)
    other = parse("ours:repair=0.001", regs)
    plain = parse("ours", regs)
    assert len({default.label, other.label, plain.label}) == 3


def test_unknown_repair_name_suggests_close_matches(regs):
    with pytest.raises(UnknownNameError) as info:
        parse("ours:repair=finetun:0.01", regs)
    message = str(info.value)
    assert "unknown repair 'finetun'" in message
    assert "did you mean 'finetune'" in message


@pytest.mark.parametrize("value, message", [
    ("0", "must be > 0"), ("-0.01", "must be > 0"), ("finetune:0", "must be > 0"),
    ("abc", "is not a number"), ("finetune:abc", "is not a number"), ("nan", "finite"),
])
def test_bad_repair_learning_rates_are_refused(regs, value, message):
    with pytest.raises(InvalidParameterError, match=message):
        parse(f"ours:repair={value}", regs)


# --------------------------------------------------------------------------- bdk=


def test_bdk_key_overrides_the_default(regs):
    assert parse("ours", regs, bdk=True).bdk is True
    assert parse("ours", regs, bdk=False).bdk is False
    assert parse("ours:bdk=false", regs, bdk=True).bdk is False
    assert parse("ours:bdk=true", regs, bdk=False).bdk is True
    # Both the reserved keys together, and the defense's own parameters next to them.
    row = parse("ours:bdk=false,repair=0.01,gamma=0.25", regs)
    assert (row.bdk, row.repair_lr, row.params.gamma) == (False, pytest.approx(0.01), 0.25)
    assert row.defense_options == {"gamma": "0.25"}


@pytest.mark.parametrize("name", ["actft", "baeraser"])
def test_trigger_defense_with_bdk_false_is_refused(regs, name):
    assert regs.defenses.get(name).requires_trigger
    with pytest.raises(InvalidParameterError) as info:
        parse(f"{name}:bdk=false", regs)
    assert f"'{name}'" in str(info.value)
    with pytest.raises(InvalidParameterError):  # the --knowledge default counts too
        parse(name, regs, bdk=False)
    assert parse(name, regs, bdk=True).bdk is True


def test_bdk_must_be_a_boolean(regs):
    with pytest.raises(InvalidParameterError, match="is not a boolean"):
        parse("ours:bdk=maybe", regs)


# --------------------------------------------------------------------------- other errors


def test_duplicate_rows_are_refused(regs):
    with pytest.raises(InvalidParameterError, match="twice"):
        parse_rows(["ours", "nad", "ours"], default_knowledge(True), regs)
    # The same row written two ways (the explicit default) is the same row.
    with pytest.raises(InvalidParameterError, match="twice"):
        parse_rows(["ours:bdk=true", "ours"], default_knowledge(True), regs)
    assert len(parse_rows(["ours", "ours:bdk=false", "ours:repair=0.01"], default_knowledge(True), regs)) == 3


def test_unknown_defense_param_names_the_key(regs):
    with pytest.raises(InvalidParameterError) as info:
        parse("ours:gama=0.5", regs)
    message = str(info.value)
    assert "'gama'" in message and "ours" in message
    assert "did you mean 'gamma'" in message


def test_bad_defense_param_value_is_refused(regs):
    with pytest.raises(InvalidParameterError, match="gamma"):
        parse("ours:gamma=abc", regs)


def test_unknown_defense_suggests_close_matches(regs):
    with pytest.raises(UnknownNameError, match="did you mean 'ours'"):
        parse("our", regs)


@pytest.mark.parametrize("text", ["ours:gamma", "ours:gamma=1,gamma=2", ":gamma=1"])
def test_malformed_rows_are_refused(regs, text):
    with pytest.raises(InvalidParameterError):
        parse(text, regs)


# --------------------------------------------------------------------------- the default rows


def test_default_row_texts_list_every_registered_defense(regs):
    texts = default_row_texts(regs)
    names = [t.partition(":")[0] for t in texts]
    assert set(names) == {e.name for e in regs.defenses if e.obj.in_default_comparison}
    assert {"fp", "anp", "nc", "ibau"}.isdisjoint(names)  # too slow for the default comparison (docs/baselines.md)
    for entry in regs.defenses:
        if not entry.obj.in_default_comparison:
            continue
        declared = entry.obj.default_rows or (entry.name,)
        assert [t for t in texts if t.partition(":")[0] == entry.name] == list(declared), entry.name
    orders = [regs.defenses.get(n).row_order for n in names]
    assert orders == sorted(orders)  # grouped by row_order, lowest first
    assert len(texts) == len(set(texts))
    rows = parse_rows(texts, default_knowledge(True), regs)  # every default row is valid
    assert any(r.repair_cls is not None for r in rows) == any("repair=" in t for t in texts)
