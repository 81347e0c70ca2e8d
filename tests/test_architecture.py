"""The layers of docs/architecture.md ("Layers"), checked on the source: every bdtool import of
every module, including imports inside functions, parsed with ``ast``. ``if TYPE_CHECKING:``
imports are for annotations only: the layer rules skip them, the cycle check counts them.

- no import cycle between modules, counting ``if TYPE_CHECKING:`` imports too (a type-level cycle
  is still two modules that cannot be read apart);
- contracts (``bdtool.core.{interfaces,errors,params,registry,tensors,data,results}``) import only
  contracts; nothing in ``bdtool.core`` imports ``bdtool.plugins``, ``bdtool.defenses`` or
  ``bdtool.cli``; built-in plugins and defenses never import the CLI;
- the core never names a concrete defense.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {  # folder -> module prefix (pyproject's [tool.setuptools.package-dir])
    "bdtool_root": "bdtool",
    "core": "bdtool.core",
    "defenses": "bdtool.defenses",
    "plugins": "bdtool.plugins",
    "cli": "bdtool.cli",
}
EXCLUDED = (ROOT / "plugins" / "examples",)  # third-party examples, not part of the package

CONTRACTS = {f"bdtool.core.{name}" for name in
             ("interfaces", "errors", "params", "registry", "tensors", "data", "results", "interrupts",
              "callbacks")}
CONTRACTS.add("bdtool.core")  # the package's __init__ (a docstring only)


def _module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for folder, prefix in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if any(path.is_relative_to(ex) for ex in EXCLUDED) or "build" in path.relative_to(ROOT).parts:
                continue
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([prefix, *parts])] = path
    return modules


MODULES = _module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(name: str) -> str | None:
    """The longest known module that ``name`` (a module or ``module.attribute``) starts with."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path, type_level: bool = False) -> set[tuple[str, int]]:
    """(imported bdtool module, line) for every import outside ``if TYPE_CHECKING:`` (and inside
    it too with ``type_level``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[tuple[str, int]] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_level:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    found.add((target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] == "bdtool":
                for alias in node.names:
                    # `from bdtool.core import tracking` names the package bdtool.core.tracking
                    target = _resolve(f"{source}.{alias.name}") or _resolve(source)
                    if target:
                        found.add((target, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard((module, 0))
    return {(target, line) for target, line in found if target != module}


GRAPH: dict[str, set[tuple[str, int]]] = {m: _imports(m, p) for m, p in MODULES.items()}
TYPE_GRAPH: dict[str, set[tuple[str, int]]] = {m: _imports(m, p, type_level=True) for m, p in MODULES.items()}


def _rel(module: str) -> str:
    return str(MODULES[module].relative_to(ROOT))


def _edges(pred_from, pred_to) -> list[str]:
    return sorted(f"{_rel(src)}:{line} imports {dst}"
                  for src, deps in GRAPH.items() if pred_from(src)
                  for dst, line in deps if pred_to(dst))


def _under(prefix: str):
    return lambda m: m == prefix or m.startswith(prefix + ".")


def test_every_package_folder_is_found():
    assert "bdtool" in MODULES and "bdtool.core.interfaces" in MODULES
    assert "bdtool.core.experiment.runner" in MODULES and "bdtool.plugins.builtin.models" in MODULES
    assert not any(m.startswith("bdtool.plugins.examples") for m in MODULES)
    assert GRAPH["bdtool.core.experiment.runner"], "the parser found no import in the runner"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {m: WHITE for m in graph}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, BLACK) == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) == WHITE:
                cycle = dfs(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = BLACK
        return None

    for start in sorted(graph):
        if colour[start] == WHITE:
            cycle = dfs(start)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    # Package __init__ files that only re-export are part of the graph like any module: importing
    # `bdtool.core.tracking` runs `bdtool/core/tracking/__init__.py`.
    graph = {m: {dst for dst, _ in deps} for m, deps in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_counting_type_checking_imports():
    graph = {m: {dst for dst, _ in deps} for m, deps in TYPE_GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (type-level imports included): " + " -> ".join(cycle)


def test_the_type_level_graph_sees_type_checking_imports():
    assert "bdtool.core.compute.training" in {d for d, _ in TYPE_GRAPH["bdtool.core.interfaces"]}
    assert "bdtool.core.compute.training" not in {d for d, _ in GRAPH["bdtool.core.interfaces"]}


def test_contracts_import_only_contracts():
    bad = _edges(lambda m: m in CONTRACTS, lambda d: d not in CONTRACTS and d != "bdtool")
    assert not bad, "contracts must import only contracts:\n" + "\n".join(bad)


def test_core_never_imports_plugins_defenses_or_cli():
    outside = ("bdtool.plugins", "bdtool.defenses", "bdtool.cli")
    bad = _edges(_under("bdtool.core"), lambda d: any(_under(p)(d) for p in outside))
    assert not bad, "the core must not import plugins, defenses or the CLI:\n" + "\n".join(bad)


def test_builtins_and_defenses_never_import_the_cli():
    bad = _edges(lambda m: _under("bdtool.plugins.builtin")(m) or _under("bdtool.defenses")(m),
                 _under("bdtool.cli"))
    assert not bad, "built-in plugins and defenses must not import the CLI:\n" + "\n".join(bad)


def _defense_names() -> set[str]:
    """Class names and registered names of every built-in defense and repair."""
    names: set[str] = set()
    for module, path in MODULES.items():
        if not _under("bdtool.defenses")(module):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    (isinstance(b, ast.Name) and b.id in ("Defense", "Repair")) for b in node.bases):
                names.add(node.name)
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "name"
                                                             for t in stmt.targets)
                            and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
                        names.add(stmt.value.value)
    return names


def test_core_never_imports_a_concrete_defense():
    defenses = _defense_names()
    assert {"ActivationEditing", "NAD"} & defenses or len(defenses) >= 5, defenses
    bad: list[str] = []
    for module, path in MODULES.items():
        if not _under("bdtool.core")(module):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imported = {a.name.split(".")[-1] for a in node.names} | {a.asname for a in node.names if a.asname}
                if getattr(node, "module", None):
                    imported.add(node.module.split(".")[-1])
                hit = sorted(imported & defenses)
                if hit:
                    bad.append(f"{_rel(module)}:{node.lineno} imports {', '.join(hit)}")
    assert not bad, "the core must never import a concrete defense:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_parses(module):
    ast.parse(MODULES[module].read_text())
