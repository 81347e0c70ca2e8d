"""Every hook is documented in docs/plugins.md (an idea from datasette's test_docs)."""

from pathlib import Path

from bdtool.plugins import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_hook_is_documented_in_plugins_md():
    text = (DOCS / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("bdtool_register_")]
    assert hooks, "no hookspecs found"
    for hook in hooks:
        assert f"`{hook}(register)`" in text, hook
