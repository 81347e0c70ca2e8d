"""``python -m bdtool.cli`` runs the ``bdtool`` command."""

from bdtool.cli import main

main()
