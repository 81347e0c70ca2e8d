"""bdtool.defenses: one module per built-in defense, each registered through our own entry
points exactly as a third-party plugin would be (docs/architecture.md, "Layers"; docs/plugins.md)."""
