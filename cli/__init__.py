"""bdtool.cli: the click command-line interface (thin: parse, call the core, report errors)."""

from bdtool.cli import compare as _compare  # noqa: F401  (registers the command)
from bdtool.cli import sweep as _sweep  # noqa: F401
from bdtool.cli import show as _show  # noqa: F401
from bdtool.cli import ui as _ui  # noqa: F401
from bdtool.cli import scaffold as _scaffold  # noqa: F401
from bdtool.cli import defend as _defend  # noqa: F401
from bdtool.cli import scan as _scan  # noqa: F401
from bdtool.cli.main import main

__all__ = ["main"]
