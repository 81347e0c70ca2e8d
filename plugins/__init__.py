"""bdtool.plugins: pluggy hookspecs, the plugin manager and the component registries (docs/plugins.md;
docs/architecture.md, "Where new things go")."""

from bdtool.plugins.registries import Registries, get_registries, reset_registries

__all__ = ["Registries", "get_registries", "reset_registries"]
