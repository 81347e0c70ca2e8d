"""bdtool's public API for plugin authors (docs/plugins.md). Import from here:

    from bdtool.api import Defense, DefenseContext, hookimpl

Everything a plugin needs is re-exported below and stays stable across releases; every other
module of bdtool is internal and may move (docs/architecture.md). The older documented paths
``bdtool.core.interfaces`` and ``bdtool.core.errors`` keep working.
"""

from __future__ import annotations

from bdtool import __version__, hookimpl
from bdtool.core.compute.modules import ForwardCapture, check_finite, is_batchnorm, preserve_modes, set_batchnorm_mode
from bdtool.core.compute.training import (
    LoopState,
    SGDParams,
    check_sgd,
    cross_entropy_loss,
    metric_logger,
    train_loop,
    train_supervised,
)
from bdtool.core.data import DataBundle
from bdtool.core.errors import (
    BdtoolError,
    DataNotFoundError,
    DefenseInputError,
    DuplicateNameError,
    InvalidParameterError,
    UnknownNameError,
    UnsafeModelFileError,
)
from bdtool.core.experiment.evaluation import accuracy, predict
from bdtool.core.experiment.sweeps import Sweep
from bdtool.core.interfaces import (
    Attack,
    AttackContext,
    DatasetSource,
    Defense,
    DefenseContext,
    Knowledge,
    Metric,
    MetricLogFn,
    MetricProbe,
    ModelArchitecture,
    Poisoning,
    ProgressFn,
    Repair,
)
from bdtool.core.params import param
from bdtool.core.results import EvalResult
from bdtool.core.tensors import LabeledTensors

__all__ = [
    # plugin registration
    "hookimpl", "__version__",
    # the interfaces a plugin implements
    "Attack", "Defense", "Repair", "Metric", "DatasetSource", "ModelArchitecture", "Sweep",
    # what a defense receives and returns
    "DefenseContext", "Knowledge", "LabeledTensors", "DataBundle", "EvalResult", "ProgressFn", "MetricLogFn",
    # what a metric that measures the defended model receives (Metric.needs_model)
    "MetricProbe",
    # what an attack receives and returns when it poisons (docs/attacks.md)
    "AttackContext", "Poisoning",
    # errors (a user mistake: one line, non-zero exit)
    "BdtoolError", "DefenseInputError", "InvalidParameterError", "DataNotFoundError", "UnknownNameError",
    "DuplicateNameError", "UnsafeModelFileError",
    # helpers a defense commonly needs
    "param", "SGDParams", "check_sgd", "train_loop", "train_supervised", "cross_entropy_loss", "metric_logger", "LoopState",
    "preserve_modes", "is_batchnorm", "set_batchnorm_mode", "check_finite", "ForwardCapture", "predict", "accuracy",
]
