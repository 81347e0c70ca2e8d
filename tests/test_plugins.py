"""Plugin discovery through real entry-point metadata (a *.dist-info on sys.path)."""

import textwrap
from pathlib import Path

import pytest

from bdtool.core.errors import DuplicateNameError
from bdtool.plugins.manager import load_plugins
from bdtool.plugins.registries import build_registries

PLUGIN_SOURCE = '''
from dataclasses import dataclass
import bdtool
from bdtool.core.interfaces import Defense

@dataclass
class Params:
    strength: float = 1.0

class Noop(Defense):
    name = "{defense}"
    label = "Noop"
    Params = Params
    def apply(self, model, ctx):
        return model

@bdtool.hookimpl
def bdtool_register_defenses(register):
    register(Noop)
'''


def make_distribution(root: Path, dist: str, entry: str, module: str, source: str) -> None:
    info = root / f"{dist}-0.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[bdtool]\n{entry} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("BDTOOL_PLUGINS", raising=False)
    return tmp_path


def test_third_party_plugin_is_discovered_through_entry_points(site):
    make_distribution(site, "bdtool-noop", "noop", "bdtool_noop_plugin", PLUGIN_SOURCE.format(defense="noop"))
    regs = build_registries(load_plugins())
    entry = regs.defenses.entry("noop")
    assert entry.source == "noop"
    info = next(p for p in regs.plugins if p.name == "noop")
    assert (info.distribution, info.version) == ("bdtool-noop", "0.3")
    assert "digits" in regs.datasets  # the built-ins still load


def test_broken_plugin_is_reported_and_skipped(site):
    make_distribution(site, "bdtool-broken", "broken", "bdtool_broken_plugin", "raise ImportError('missing dep xyz')\n")
    make_distribution(site, "bdtool-noop", "noop", "bdtool_noop_plugin2", PLUGIN_SOURCE.format(defense="noop"))
    regs = build_registries(load_plugins())
    failure = next(f for f in regs.failures if f.name == "broken")
    assert failure.distribution == "bdtool-broken"
    assert "missing dep xyz" in failure.error
    assert "noop" in regs.defenses


def test_duplicate_defense_names_both_plugins(site):
    make_distribution(site, "bdtool-a", "plugin-a", "bdtool_dup_a", PLUGIN_SOURCE.format(defense="twin"))
    make_distribution(site, "bdtool-b", "plugin-b", "bdtool_dup_b", PLUGIN_SOURCE.format(defense="twin"))
    with pytest.raises(DuplicateNameError) as info:
        build_registries(load_plugins())
    assert "plugin-a" in str(info.value) and "plugin-b" in str(info.value)


def test_misspelled_hookimpl_fails_loudly(site):
    source = "import bdtool\n\n@bdtool.hookimpl\ndef bdtool_register_defences(register):\n    pass\n"
    make_distribution(site, "bdtool-typo", "typo", "bdtool_typo_plugin", source)
    from pluggy import PluginValidationError

    with pytest.raises(PluginValidationError, match="bdtool_register_defences"):
        load_plugins()


def test_bdtool_plugins_env_restricts_loading(site, monkeypatch):
    make_distribution(site, "bdtool-noop", "noop", "bdtool_noop_plugin3", PLUGIN_SOURCE.format(defense="noop"))
    monkeypatch.setenv("BDTOOL_PLUGINS", "datasets,noop")
    loaded = load_plugins()
    assert sorted(p.name for p in loaded.plugins) == ["datasets", "noop"]


BAD_REGISTRATIONS = '''
import bdtool

class NotADefense:
    name = "not-a-defense"

@bdtool.hookimpl
def bdtool_register_defenses(register):
    register(NotADefense)

@bdtool.hookimpl
def bdtool_register_sweeps(register):
    register({"name": "not-a-sweep", "rows": ["ours"]})
'''


def test_registering_the_wrong_type_is_a_plugin_failure_not_a_crash(site):
    make_distribution(site, "bdtool-badreg", "badreg", "bdtool_badreg_plugin", BAD_REGISTRATIONS)
    regs = build_registries(load_plugins())
    failures = [f for f in regs.failures if f.name == "badreg"]
    by_hook = {f.error.split(":")[0]: f for f in failures}
    assert set(by_hook) == {"bdtool_register_defenses", "bdtool_register_sweeps"}, failures
    assert all(f.distribution == "bdtool-badreg" for f in failures)
    defense_error = by_hook["bdtool_register_defenses"].error
    assert "NotADefense" in defense_error and "not a subclass of Defense" in defense_error
    assert "not an instance of Sweep" in by_hook["bdtool_register_sweeps"].error
    assert "not-a-defense" not in regs.defenses and "not-a-sweep" not in regs.sweeps
    # The rest loads: built-ins and the other plugins are all there.
    assert "digits" in regs.datasets and "table7" in regs.sweeps and "ours" in regs.defenses


def test_unknown_defense_after_loading_suggests_close_matches(site):
    make_distribution(site, "bdtool-noop", "noop", "bdtool_noop_plugin4", PLUGIN_SOURCE.format(defense="noop-defense"))
    regs = build_registries(load_plugins())
    from bdtool.core.errors import UnknownNameError

    with pytest.raises(UnknownNameError) as info:
        regs.defenses.get("noop-defence")
    assert "did you mean 'noop-defense'?" in str(info.value)
    assert "noop-defense" in str(info.value).split("Known:")[1]


def test_the_builtin_entry_points_are_those_pyproject_declares():
    import tomllib
    from pathlib import Path

    from bdtool.plugins.manager import BUILTIN_ENTRY_POINTS

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert set(BUILTIN_ENTRY_POINTS) == set(project["entry-points"]["bdtool"])


def test_this_install_is_not_stale():
    from bdtool.plugins.manager import stale_builtins

    assert stale_builtins() == []


def test_a_stale_install_says_so_with_the_fix(monkeypatch):
    """Metadata older than the code (a built-in's entry point missing, as after a pull without
    re-running pip install -e .): the unknown name's line says the install is stale and how to fix it;
    bdtool plugins lists the missing entry point as failed."""
    import json
    from importlib import metadata

    from click.testing import CliRunner

    from bdtool.cli import main
    from bdtool.plugins import reset_registries

    real_distributions, real_distribution = metadata.distributions, metadata.distribution

    class Stale:
        def __init__(self, dist):
            self._dist = dist

        def __getattr__(self, name):
            return getattr(self._dist, name)

        @property
        def entry_points(self):
            return [ep for ep in self._dist.entry_points if not (ep.group == "bdtool" and ep.name == "nc")]

    def wrap(dist):
        return Stale(dist) if (dist.metadata["Name"] or "") == "bdtool" else dist

    try:
        with monkeypatch.context() as patch:
            patch.setattr(metadata, "distributions", lambda: [wrap(d) for d in real_distributions()])
            patch.setattr(metadata, "distribution", lambda name: wrap(real_distribution(name)))
            reset_registries()
            result = CliRunner().invoke(main, ["compare", "--dry-run", "--defense", "nc"])
            lines = result.stderr.strip().splitlines()
            assert result.exit_code == 2 and len(lines) == 1, result.output
            assert "unknown defense 'nc'" in lines[0] and "this install is stale" in lines[0]
            assert "pip install -e ." in lines[0]
            failed = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).stdout)["failed"]
            assert [f["name"] for f in failed] == ["nc"]
    finally:
        reset_registries()
