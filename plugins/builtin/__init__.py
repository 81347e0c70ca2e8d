"""The built-in attacks, datasets, models, metrics and sweeps. Each module is a plugin registered
through bdtool's own entry points, exactly as a third party's would be (docs/architecture.md)."""
