import pytest

from bdtool.core.errors import DuplicateNameError, UnknownNameError
from bdtool.core.registry import Registry
from bdtool.plugins import get_registries
from bdtool.plugins.registries import KINDS


def test_unknown_name_suggests_close_matches_and_lists_known():
    reg: Registry[int] = Registry("defense")
    for name in ("nad", "ours", "actft"):
        reg.register(name, 1, source="p")
    with pytest.raises(UnknownNameError) as info:
        reg.get("nda")
    message = str(info.value)
    assert "unknown defense 'nda'" in message
    assert "did you mean 'nad'?" in message
    assert "Known: actft, nad, ours" in message


def test_unknown_name_without_close_match_has_no_suggestion():
    reg: Registry[int] = Registry("dataset")
    reg.register("digits", 1, source="p")
    message = Registry.unknown_message(reg, "zzzzzz")
    assert "did you mean" not in message and "Known: digits" in message


def test_duplicate_name_names_both_plugins():
    reg: Registry[int] = Registry("attack")
    reg.register("badnets", 1, source="first-plugin")
    with pytest.raises(DuplicateNameError, match="'first-plugin' and by plugin 'second-plugin'"):
        reg.register("badnets", 2, source="second-plugin")


def test_wildcard_listing_is_sorted():
    reg: Registry[int] = Registry("model")
    for name in ("vgg", "resnet18", "resnet50", "small-cnn"):
        reg.register(name, 0, source="p")
    assert reg.names("res*") == ["resnet18", "resnet50"]


@pytest.mark.parametrize("attr", list(KINDS))
def test_every_registry_has_builtins_and_lookup_of_unknown_fails(attr):
    registry = get_registries().registry(attr)
    if attr in ("defenses", "repairs") and len(registry) == 0:
        pytest.skip("no defenses/repairs installed in this checkout")
    assert len(registry) > 0
    for entry in registry:
        assert registry.get(entry.name) is entry.obj
        assert entry.obj.name == entry.name
    with pytest.raises(UnknownNameError):
        registry.get("definitely-not-registered")


def test_builtins_come_from_our_own_entry_points():
    regs = get_registries()
    assert regs.datasets.entry("digits").source == "datasets"
    assert regs.attacks.entry("badnets").source == "attacks"
    assert {p.distribution for p in regs.plugins if p.name in ("datasets", "models", "attacks", "metrics")} == {"bdtool"}
    assert not [f for f in regs.failures if f.distribution == "bdtool"], regs.failures


def test_registry_errors_carry_structured_fields():
    registry = Registry("defense")
    registry.register("ours", object, source="first-plugin")
    with pytest.raises(DuplicateNameError) as dup:
        registry.register("ours", object, source="second-plugin")
    assert (dup.value.kind, dup.value.name, dup.value.plugins) == ("defense", "ours", ("first-plugin", "second-plugin"))
    with pytest.raises(UnknownNameError) as unknown:
        registry.get("ourz")
    assert (unknown.value.kind, unknown.value.name, unknown.value.suggestions) == ("defense", "ourz", ("ours",))
