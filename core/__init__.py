"""bdtool.core: interfaces, data, models, attacks, training, metrics, runner and tracking.

The core knows interfaces and registries, never concrete defenses (DESIGN.md §2).
"""
