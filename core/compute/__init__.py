"""bdtool.core.compute: devices, timing, the one SGD training loop and model inspection helpers
that every defense and the victim trainer share (docs/architecture.md)."""
