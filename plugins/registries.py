"""The six component registries, filled by calling each plugin's hooks with ``register``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bdtool.core.experiment.sweeps import Sweep
from bdtool.core.interfaces import Attack, DatasetSource, Defense, Metric, ModelArchitecture, Repair
from bdtool.core.errors import DuplicateNameError
from bdtool.core.registry import Registry
from bdtool.plugins.manager import LoadedPlugins, PluginFailure, PluginInfo, load_plugins

# registry attribute -> (hook name, base class, kind as users read it)
KINDS: dict[str, tuple[str, type, str]] = {
    "defenses": ("bdtool_register_defenses", Defense, "defense"),
    "attacks": ("bdtool_register_attacks", Attack, "attack"),
    "repairs": ("bdtool_register_repairs", Repair, "repair"),
    "metrics": ("bdtool_register_metrics", Metric, "metric"),
    "datasets": ("bdtool_register_datasets", DatasetSource, "dataset"),
    "models": ("bdtool_register_models", ModelArchitecture, "model"),
    "sweeps": ("bdtool_register_sweeps", Sweep, "sweep"),
}
INSTANCE_KINDS = {"sweeps"}
"""Kinds registered as instances (data), not as classes."""


@dataclass
class Registries:
    defenses: Registry[type[Defense]] = field(default_factory=lambda: Registry("defense"))
    attacks: Registry[type[Attack]] = field(default_factory=lambda: Registry("attack"))
    repairs: Registry[type[Repair]] = field(default_factory=lambda: Registry("repair"))
    metrics: Registry[type[Metric]] = field(default_factory=lambda: Registry("metric"))
    datasets: Registry[type[DatasetSource]] = field(default_factory=lambda: Registry("dataset"))
    models: Registry[type[ModelArchitecture]] = field(default_factory=lambda: Registry("model"))
    sweeps: Registry[Sweep] = field(default_factory=lambda: Registry("sweep"))
    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)

    def registry(self, attr: str) -> Registry[Any]:
        return getattr(self, attr)


def build_registries(loaded: LoadedPlugins) -> Registries:
    """Call every hook implementation with a ``register`` bound to its plugin's name, so a
    duplicate name can be reported with both plugins."""
    regs = Registries(plugins=list(loaded.plugins), failures=list(loaded.failures))
    for attr, (hook_name, base, kind) in KINDS.items():
        registry = regs.registry(attr)
        hook = getattr(loaded.manager.hook, hook_name)
        # Hook implementations run in registration order (pluggy calls LIFO; reverse it).
        for impl in reversed(hook.get_hookimpls()):
            source = impl.plugin_name

            def register(component: Any, name: str | None = None, *, _source: str = source,
                         _base: type = base, _kind: str = kind, _registry: Registry[Any] = registry,
                         _instance: bool = attr in INSTANCE_KINDS) -> None:
                ok = isinstance(component, _base) if _instance else (
                    isinstance(component, type) and issubclass(component, _base))
                if not ok:
                    what = "an instance" if _instance else "a subclass"
                    raise TypeError(
                        f"plugin '{_source}' registered {component!r} as a {_kind}, "
                        f"but it is not {what} of {_base.__name__}"
                    )
                _registry.register(name or component.name, component, source=_source)

            try:
                impl.function(register=register)
            except DuplicateNameError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broken plugin is reported and skipped
                dist = next((p.distribution for p in regs.plugins if p.name == source), "?")
                regs.failures.append(PluginFailure(source, dist, f"{hook_name}: {type(exc).__name__}: {exc}"))
    return regs


_CACHE: Registries | None = None


def get_registries() -> Registries:
    """The process-wide registries, loaded once from entry points."""
    global _CACHE
    if _CACHE is None:
        _CACHE = build_registries(load_plugins())
    return _CACHE


def reset_registries() -> None:
    """Forget the loaded registries (tests; after installing a plugin in-process)."""
    global _CACHE
    _CACHE = None
