"""``bdtool plugin new NAME``: the generated package installs, is discovered through its entry
point, and its own test passes; bad names and existing folders are refused with one line."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from bdtool.cli import main

FILES = ["pyproject.toml", "demo_def.py", "tests/test_demo_def.py", "README.md"]


def test_new_writes_the_package(tmp_path):
    result = CliRunner().invoke(main, ["plugin", "new", "demo-def", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    pkg = tmp_path / "bdtool-demo-def"
    for rel in FILES:
        assert (pkg / rel).is_file(), rel
        assert rel in result.output
    assert "bdtool compare --defense demo-def" in result.output
    source = (pkg / "demo_def.py").read_text()
    imported = {n.module for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("bdtool")}
    assert imported == {"bdtool.api"}
    assert 'demo-def = "demo_def"' in (pkg / "pyproject.toml").read_text()
    assert "TODO" not in source


@pytest.mark.parametrize("name", ["Demo", "demo_def", "1demo", "demo--def", "-demo", "demo-", "", "de mo"])
def test_bad_names_are_refused(tmp_path, name):
    result = CliRunner().invoke(main, ["plugin", "new", "--dir", str(tmp_path), "--", name])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "invalid plugin name" in result.output
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_refused(tmp_path):
    (tmp_path / "bdtool-demo-def").mkdir()
    (tmp_path / "bdtool-demo-def" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["plugin", "new", "demo-def", "--dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "already exists" in result.output
    assert [p.name for p in (tmp_path / "bdtool-demo-def").iterdir()] == ["keep.txt"]


# pip install + a pytest subprocess that trains its own tiny victim: ~25 s on 2 idle cores (not marked slow).
def test_the_generated_package_installs_is_discovered_and_its_test_passes(tmp_path, monkeypatch):
    assert CliRunner().invoke(main, ["plugin", "new", "demo-def", "--dir", str(tmp_path)]).exit_code == 0
    pkg = tmp_path / "bdtool-demo-def"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(pkg)], check=True, capture_output=True, text=True)

    monkeypatch.syspath_prepend(str(target))
    monkeypatch.delenv("BDTOOL_PLUGINS", raising=False)
    from bdtool.plugins.manager import load_plugins
    from bdtool.plugins.registries import build_registries

    regs = build_registries(load_plugins())
    assert not regs.failures, regs.failures
    entry = regs.defenses.entry("demo-def")
    assert entry.source == "demo-def"
    info = next(p for p in regs.plugins if p.name == "demo-def")
    assert (info.distribution, info.module) == ("bdtool-demo-def", "demo_def")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("BDTOOL_PLUGINS", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
