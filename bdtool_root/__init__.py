"""bdtool: remove backdoors from image classifiers and compare defenses fairly.

Plugins write ``@bdtool.hookimpl`` (docs/plugins.md); everything else lives in the subpackages
``bdtool.core``, ``bdtool.defenses``, ``bdtool.plugins`` and ``bdtool.cli``.
"""

from importlib.metadata import PackageNotFoundError, version

import pluggy

hookimpl = pluggy.HookimplMarker("bdtool")

try:
    __version__ = version("bdtool")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["hookimpl", "__version__"]
