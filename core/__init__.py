"""bdtool.core: the contracts (interfaces, errors, params, registry, tensors, data, results) at the
top level; ``compute``, ``experiment`` and ``tracking`` below them.

The core knows interfaces and registries, never concrete defenses, attacks, datasets or models
(docs/architecture.md, "Layers").
"""
