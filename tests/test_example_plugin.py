"""The example third-party package under plugins/examples/ is discovered through the real
entry-point metadata pip writes when it installs it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bdtool.core.experiment.evaluation import evaluate
from bdtool.plugins.manager import load_plugins
from bdtool.plugins.registries import build_registries

EXAMPLE = Path(__file__).resolve().parents[1] / "plugins" / "examples" / "bdtool-clp"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, text=True,
    )
    assert list(target.glob("bdtool_clp-*.dist-info/entry_points.txt"))
    return target


def test_example_plugin_is_discovered_and_runs(installed_example, monkeypatch, make_context, digits_victim):
    monkeypatch.syspath_prepend(str(installed_example))
    monkeypatch.delenv("BDTOOL_PLUGINS", raising=False)
    regs = build_registries(load_plugins())
    entry = regs.defenses.entry("clp")
    assert entry.source == "clp"
    info = next(p for p in regs.plugins if p.name == "clp")
    assert (info.distribution, info.version) == ("bdtool-clp", "0.1.0")

    cls = entry.obj
    model = cls(cls.make_params({"u": "2.5"})).defend(digits_victim.model, make_context(n=5, bdk=False))
    result = evaluate(model, digits_victim.data.evaluation, digits_victim.attack, 10, torch.device("cpu"))
    assert 0.0 <= result.asr <= 1.0 and result.acc > 0.1
