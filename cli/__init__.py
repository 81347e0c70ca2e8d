"""bdtool.cli: the click command-line interface (thin: parse, call the core, report errors)."""

from bdtool.cli.main import main

__all__ = ["main"]
