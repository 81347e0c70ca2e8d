"""Hooks a bdtool plugin may implement. Each receives ``register(component_class)``."""

import pluggy

hookspec = pluggy.HookspecMarker("bdtool")


@hookspec
def bdtool_register_defenses(register):
    """Register Defense subclasses."""


@hookspec
def bdtool_register_attacks(register):
    """Register Attack subclasses."""


@hookspec
def bdtool_register_repairs(register):
    """Register Repair subclasses."""


@hookspec
def bdtool_register_metrics(register):
    """Register Metric subclasses."""


@hookspec
def bdtool_register_datasets(register):
    """Register DatasetSource subclasses."""


@hookspec
def bdtool_register_models(register):
    """Register ModelArchitecture subclasses."""


@hookspec
def bdtool_register_sweeps(register):
    """Register Sweep instances (named grids of comparisons for ``bdtool sweep``)."""
