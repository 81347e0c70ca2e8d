"""The plugin manager: loads the entry-point group ``bdtool``, skipping (and reporting) plugins
that fail to import, so one broken plugin never takes the others down (docs/plugins.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata

import pluggy

from bdtool.plugins import hookspecs

GROUP = "bdtool"
ENV_RESTRICT = "BDTOOL_PLUGINS"

BUILTIN_ENTRY_POINTS = (
    "datasets", "models", "attacks", "sig", "wanet", "lc", "adap-blend", "adap-patch", "proj-aware", "metrics",
    "sweeps", "ours", "ours-proj", "finetune-repair", "basicft", "actft", "nad", "baeraser", "retrain", "suppress-target", "fp", "anp", "nc",
    "ibau",
)
"""The entry points bdtool's own distribution declares (pyproject.toml; tests/test_plugins.py keeps
the two the same). One missing from the installed metadata means a stale install: metadata written
by an older version than the code (an editable install not re-run after a pull)."""
STALE = "missing from this install's entry points (the installed metadata is older than the code): reinstall, " \
        "e.g. pip install -e ."


@dataclass(frozen=True)
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str


@dataclass(frozen=True)
class PluginFailure:
    name: str
    distribution: str
    error: str


@dataclass
class LoadedPlugins:
    manager: pluggy.PluginManager
    plugins: list[PluginInfo]
    failures: list[PluginFailure]


def _allowed_names() -> set[str] | None:
    raw = os.environ.get(ENV_RESTRICT, "").strip()
    if not raw:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def load_plugins() -> LoadedPlugins:
    """Create the manager and load every entry point of group ``bdtool``.

    ``BDTOOL_PLUGINS=a,b`` (entry-point names) restricts which load. A plugin whose import raises
    is recorded in ``failures`` (name, distribution, exception) and skipped.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    allowed = _allowed_names()
    plugins: list[PluginInfo] = []
    failures: list[PluginFailure] = []
    seen: set[str] = set()
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != GROUP or ep.name in seen:
                continue
            if allowed is not None and ep.name not in allowed:
                continue
            dist_name = dist.metadata["Name"] or "?"
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's, not ours
                failures.append(PluginFailure(ep.name, dist_name, f"{type(exc).__name__}: {exc}"))
                continue
            seen.add(ep.name)
            if pm.is_registered(module):
                # Several entry points may name one module; register it once.
                plugins.append(PluginInfo(ep.name, ep.value, dist_name, dist.version))
                continue
            pm.register(module, name=ep.name)
            plugins.append(PluginInfo(ep.name, ep.value, dist_name, dist.version))
    pm.check_pending()
    failures += stale_builtins(allowed)
    return LoadedPlugins(pm, plugins, failures)


def stale_builtins(allowed: set[str] | None = None) -> list[PluginFailure]:
    """A failure for each built-in entry point the installed ``bdtool`` distribution lacks (none when
    bdtool runs without installed metadata)."""
    try:
        dist = metadata.distribution("bdtool")
    except metadata.PackageNotFoundError:
        return []
    declared = {ep.name for ep in dist.entry_points if ep.group == GROUP}
    return [PluginFailure(name, "bdtool", STALE) for name in BUILTIN_ENTRY_POINTS
            if name not in declared and (allowed is None or name in allowed)]
