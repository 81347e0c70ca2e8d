"""docs/plugins.md is enough on its own: its complete defense example runs through the real CLI,
imports only bdtool.api, logs its (namespaced) metric to MLflow, and its test example passes."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
MODULE = "bdtool_fineprune"  # the module name docs/plugins.md gives the example (its test imports it)


def doc_block(tag: str) -> str:
    """The fenced ```python block right after ``<!-- example: TAG -->`` in docs/plugins.md."""
    match = re.search(rf"<!-- example: {tag} -->\s*```python\n(.*?)\n```", DOC.read_text(), re.S)
    assert match, f"docs/plugins.md has no ```python block after <!-- example: {tag} -->"
    return match.group(1)


def bdtool_imports(source: str) -> set[str]:
    """Every bdtool module a source imports (``import bdtool.x``, ``from bdtool.x import ...``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bdtool"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bdtool":
            found.add(node.module)
    return found


@pytest.fixture
def doc_module(tmp_path, monkeypatch):
    """The doc's defense example, written to ``bdtool_fineprune.py`` and imported."""
    (tmp_path / f"{MODULE}.py").write_text(doc_block("defense"))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(MODULE, None)
    module = importlib.import_module(MODULE)
    yield module
    sys.modules.pop(MODULE, None)


def defense_class(module):
    from bdtool.api import Defense

    classes = [c for c in vars(module).values()
               if inspect.isclass(c) and issubclass(c, Defense) and c is not Defense and c.__module__ == module.__name__]
    assert len(classes) == 1, classes
    return classes[0]


def test_the_examples_import_only_the_public_api():
    assert bdtool_imports(doc_block("defense")) == {"bdtool.api"}
    assert bdtool_imports(doc_block("test")) <= {"bdtool.api", "bdtool.testing"}


def test_the_example_plugin_imports_only_the_public_api():
    source = (ROOT / "plugins" / "examples" / "bdtool-clp" / "bdtool_clp.py").read_text()
    assert bdtool_imports(source) <= {"bdtool", "bdtool.api"}, bdtool_imports(source)


def _no_nan(value: str):
    raise ValueError(f"not strict JSON: {value}")


def test_the_doc_defense_runs_through_the_cli(doc_module, mlflow_store, digits_victim):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    import bdtool.cli
    from bdtool.plugins import get_registries

    cls = defense_class(doc_module)
    hooked = []
    doc_module.bdtool_register_defenses(register=hooked.append)  # the hook registers the class
    assert hooked == [cls]
    registry = get_registries().defenses
    registry.register(cls.name, cls, source="docs")
    try:
        result = CliRunner().invoke(bdtool.cli.main, [
            "compare", "--defense", cls.name, "--samples", "5", "--seeds", "1", "--no-log-models",
            "--tracking-uri", mlflow_store, "--experiment", "docs", "--json"])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout, parse_constant=_no_nan)
        row = next(r for r in payload["rows"] if r["label"].startswith(cls.label))
        assert row["status"] == "ok" and row["seeds_failed"] == 0, row
        assert payload["runs"][0]["status"] == "FINISHED", payload["runs"][0]

        client = MlflowClient(tracking_uri=mlflow_store)
        exp = client.get_experiment_by_name("docs")
        runs = [r for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("bdtool.kind") == "defense" and r.data.tags.get("bdtool.defense", cls.name) == cls.name]
        assert len(runs) == 1
        metrics = runs[0].data.metrics
        # The runner namespaces a defense's keys with "<name>." (docs/plugins.md, "Metrics you log").
        assert metrics[f"{cls.name}.pruned_channels"] >= 1, metrics
        assert f"{cls.name}.loss" in metrics
        assert "pruned_channels" not in metrics
    finally:
        registry.unregister(cls.name)


def test_the_doc_test_example_passes(doc_module, mlflow_store, digits_victim):
    """Run the doc's test functions with the fixtures bdtool.testing would give them (the victim
    from the session's store: tiny_victim finds it again by its hash)."""
    from bdtool.testing import make_context, tiny_victim

    victim = tiny_victim(Path(mlflow_store.removeprefix("sqlite:///")).parent)
    fixtures = {
        "bdtool_victim": victim,
        "bdtool_context": lambda defense_cls, **kwargs: make_context(victim, defense_cls, **kwargs),
    }
    namespace: dict = {"__name__": "doc_test_example"}
    exec(compile(doc_block("test"), "docs/plugins.md:example-test", "exec"), namespace)
    assert namespace.get("pytest_plugins") == ["bdtool.testing"]
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert tests
    for test in tests:
        test(**{p: fixtures[p] for p in inspect.signature(test).parameters})
