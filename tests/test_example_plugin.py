"""The example third-party package under plugins/examples/ is discovered through the real
entry-point metadata pip writes when it installs it (the `installed_example` fixture, conftest.py)."""

import torch

from bdtool.core.experiment.evaluation import evaluate
from bdtool.plugins.manager import load_plugins
from bdtool.plugins.registries import build_registries

def test_example_plugin_is_discovered_and_runs(installed_example, monkeypatch, make_context, digits_victim):
    monkeypatch.syspath_prepend(str(installed_example))
    monkeypatch.delenv("BDTOOL_PLUGINS", raising=False)
    regs = build_registries(load_plugins())
    entry = regs.defenses.entry("clp")
    assert entry.source == "clp"
    info = next(p for p in regs.plugins if p.name == "clp")
    assert (info.distribution, info.version) == ("bdtool-clp", "0.1.0")

    cls = entry.obj
    ctx = make_context(n=5, bdk=False)
    logged: dict[str, float] = {}
    ctx.log_metric = lambda key, value, step=None: logged.__setitem__(key, value)
    model = cls(cls.make_params({"u": "2"})).defend(digits_victim.model, ctx)
    # CLP prunes a channel by zeroing its BatchNorm scale and shift: the count it logs must be
    # the channels it actually zeroed, and it must have pruned some (u=2 prunes ~8 on digits).
    zeroed = sum(int(((m.weight == 0) & (m.bias == 0)).sum()) for m in model.modules()
                 if isinstance(m, torch.nn.BatchNorm2d))
    assert logged["pruned_channels"] == zeroed >= 1
    # Pruning a few channels keeps the clean accuracy within a few points of the victim's.
    result = evaluate(model, digits_victim.data.evaluation, digits_victim.attack, 10, torch.device("cpu"))
    assert result.acc >= digits_victim.before.acc - 0.05
    assert not any(bool((m.weight == 0).any()) for m in digits_victim.model.modules()
                   if isinstance(m, torch.nn.BatchNorm2d)), "the victim itself was pruned"
