"""bdtool.plugins: pluggy hookspecs, the plugin manager and the component registries (DESIGN.md §3)."""

from bdtool.plugins.registries import Registries, get_registries, reset_registries

__all__ = ["Registries", "get_registries", "reset_registries"]
