"""The whole CLI surface fuzzed (tests/cli_surface.py): every option and argument of every command
and every field of every registered plugin's parameters, with hostile and generated values.

Each invocation succeeds, or exits non-zero with one ``Error:`` line (the last of stderr, no
control character in it) and no traceback, and leaves no run in the store. CI tries each slot
with a few listed hostile values and a few generated ones; ``benchmarks/fuzz_cli.py`` tries every
listed value and more generated ones (docs/reliability.md, "The fuzzed CLI surface")."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

import cli_surface

SLOTS = cli_surface.all_slots()
CI_VALUES = ["-1", "0", "2147483648", "nan", "1e309", "", "a\nb", "\x1b[31mred", "a" * 5000, "/dev/null", "/dev/zero",
             "名前", ",", "=x"]


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return cli_surface.make_fixtures(tmp_path_factory.mktemp("fuzz"))


def test_the_surface_covers_every_command_and_every_plugin():
    from bdtool.cli import main
    from bdtool.plugins import get_registries

    commands = {" ".join(words) for words, _ in cli_surface._commands(main)} - {"plugins"}  # only --json
    assert {s.name.rsplit(" ", 1)[0] for s in SLOTS} >= commands
    regs = get_registries()
    named = " ".join(s.name for s in SLOTS)
    for entry in [*regs.defenses, *regs.attacks]:
        assert f"{entry.name}:" in named, entry.name


@pytest.mark.parametrize("slot", SLOTS, ids=[s.name for s in SLOTS])
def test_every_slot_runs_or_refuses_in_one_line(slot, fx):
    for value in CI_VALUES:
        verdict = cli_surface.check(slot.build(value, fx), fx)
        assert verdict.ok, f"{slot.name} = {value[:60]!r}: {verdict.why}\n{verdict.stderr_tail}"

    @settings(max_examples=4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(cli_surface.values(list(slot.choices)))
    def generated(value: str) -> None:
        verdict = cli_surface.check(slot.build(value, fx), fx)
        assert verdict.ok, f"{slot.name} = {value[:60]!r}: {verdict.why}\n{verdict.stderr_tail}"

    generated()


def test_the_property_fails_on_what_it_must_catch(fx, monkeypatch):
    """The checker is not vacuous: a traceback, two error lines, a control character, a message
    that is not an error line and an escaped exception each fail it."""
    from click.testing import CliRunner, Result

    def verdict_of(stderr: str, code: int = 1, exception: BaseException | None = None):
        data = stderr.encode()
        monkeypatch.setattr(cli_surface, "invoke", lambda argv, fx: Result(
            runner=CliRunner(), stdout_bytes=b"", stderr_bytes=data, output_bytes=data, return_value=None,
            exit_code=code, exception=exception))
        return cli_surface.check(["list"], fx)

    assert verdict_of("Error: one clear line\n").ok
    assert not verdict_of("Traceback (most recent call last):\nError: x\n").ok
    assert not verdict_of("Error: one\nError: two\n").ok
    assert not verdict_of("Error: a \x1b[31m coloured line\n").ok
    assert not verdict_of("something went wrong\n").ok
    assert not verdict_of("", exception=RuntimeError("escaped")).ok
