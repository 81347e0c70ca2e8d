"""The interfaces plugins implement: Attack, Defense, Repair, Metric, DatasetSource,
ModelArchitecture (docs/architecture.md). Each is an ABC with a typed params dataclass.

This module is part of the contracts layer: it imports nothing concrete (no built-in, no
experiment code); ``TYPE_CHECKING`` imports are for annotations only.
"""

from __future__ import annotations

import copy
import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch
from torch import Tensor, nn

from bdtool.core.callbacks import (DetectionFn, DetectionReport, MetricLogFn, ProgressFn, _no_detection, _no_metric,
                                   _no_progress)
from bdtool.core.errors import BdtoolError, DefenseInputError
from bdtool.core.params import build_params, params_to_dict
from bdtool.core.tensors import LabeledTensors

if TYPE_CHECKING:
    from bdtool.core.data import DataBundle
    from bdtool.core.results import EvalResult
    from bdtool.core.compute.training import TrainConfig


@dataclass
class NoParams:
    """For components without parameters."""


class _Parametrised:
    """Shared construction: ``Params`` is a dataclass; ``from_options`` builds it from strings."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def make_params(cls, options: Mapping[str, Any] | None = None) -> Any:
        return build_params(cls.Params, dict(options or {}), owner=cls.name)

    def params_dict(self) -> dict[str, Any]:
        return params_to_dict(self.params)


# --------------------------------------------------------------------------- attacks


@dataclass
class Poisoning:
    """What an attack did to a training set (``Attack.poison``).

    ``poisoned_indices`` carry the backdoor (what the oracle retraining drops);
    ``noise_indices`` were changed by the attack without carrying it and keep their labels (WaNet's
    noise mode); every other sample is untouched.
    """

    data: LabeledTensors
    poisoned_indices: Tensor
    noise_indices: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


@dataclass
class AttackContext:
    """What an attack may use when it poisons (``Attack.prepare``), handed over by the victim
    pipeline; never the evaluation half.

    ``clean_model()`` returns a model of the victim's dataset, architecture, recipe and seed trained
    on the *unpoisoned* training set (label-consistent attacks perturb against it). It is trained
    on first call only, cached in the store like a victim (poison rate 0) and its time logged."""

    num_classes: int
    seed: int
    device: torch.device
    clean_model: Callable[[], nn.Module]
    progress: "ProgressFn" = field(default_factory=lambda: _no_progress)


ALL_TO_ALL = -1
"""The target of an all-to-all backdoor (``--target all-to-all``): an image of class y, stamped,
goes to (y + 1) mod K. ``Attack.target_class`` holds it; there is then no single target class
(no CTCA, no null row, no target label to know; docs/attacks.md, "All-to-all")."""


def target_text(target: int) -> str:
    """How tables and messages name a target: the class, or ``all-to-all``."""
    return "all-to-all" if target == ALL_TO_ALL else str(target)


class Attack(_Parametrised, ABC):
    """A backdoor attack: a trigger stamped on images and a target class.

    ``apply`` is the trigger as the attacker uses it at test time (ASR, and what trigger-knowing
    defenses stamp); ``poison`` is what the attack does to the training set, by default the
    dirty-label protocol of BadNets (Gu et al. 2017): a share of the non-target images stamped with
    ``apply`` and relabelled to the target. Clean-label attacks override ``poison``; an attack that
    needs something at poisoning time (a clean model) gets it in ``prepare``.
    """

    description: ClassVar[str] = ""
    poison_rate_of: ClassVar[str] = "training set"
    """What ``--poison-rate`` is a share of: ``"training set"`` (dirty-label attacks) or
    ``"target class"`` (clean-label attacks, as their papers count it)."""

    def __init__(self, target_class: int = 0, params: Any | None = None) -> None:
        super().__init__(params)
        self.target_class = int(target_class)
        self.num_classes: int | None = None
        """The data set's class count, set by the pipeline before ``poison`` (an all-to-all
        backdoor's labels need it)."""

    @property
    def all_to_all(self) -> bool:
        """True when every class has its own target, (y + 1) mod K (``ALL_TO_ALL``)."""
        return self.target_class == ALL_TO_ALL

    def target_labels(self, y: Tensor, num_classes: int | None = None) -> Tensor:
        """The label a stamped image of true class ``y`` is poisoned to: the target class, or
        (y + 1) mod K for an all-to-all backdoor (K = ``num_classes`` or ``self.num_classes``)."""
        if not self.all_to_all:
            return torch.full_like(y, self.target_class)
        k = num_classes if num_classes is not None else self.num_classes
        if k is None:
            raise BdtoolError("an all-to-all backdoor needs the number of classes (attack.num_classes)")
        return (y + 1) % k

    def trigger_candidates(self, y: Tensor) -> Tensor:
        """Indices of the images a dirty-label attack may poison: every non-target image, every
        image for an all-to-all backdoor."""
        return torch.arange(len(y)) if self.all_to_all else torch.nonzero(y != self.target_class).flatten()

    @abstractmethod
    def apply(self, x: Tensor) -> Tensor:
        """Return a copy of the batch ``x`` (NCHW, values in [0,1]) with the trigger stamped."""

    def prepare(self, train: LabeledTensors, ctx: AttackContext) -> None:
        """Called once before ``poison`` when the poison rate is above 0; the default needs nothing."""
        return None

    def draw_poisoned(self, data: LabeledTensors, rate: float, generator: torch.Generator) -> Tensor:
        """The dirty-label draw: ``round(rate * len(data))`` of the images this attack may poison
        (``trigger_candidates``), in the order ``generator`` draws them (sort them for a set)."""
        if not 0.0 <= rate < 1.0:
            raise BdtoolError(f"poison rate must be in [0, 1), got {rate}")
        candidates = self.trigger_candidates(data.y)
        n_poison = int(round(rate * len(data)))
        if n_poison > len(candidates):
            raise BdtoolError(
                f"poison rate {rate} needs {n_poison} non-target samples; only {len(candidates)} exist")
        return candidates[torch.randperm(len(candidates), generator=generator)[:n_poison]]

    def poison(self, data: LabeledTensors, rate: float, generator: torch.Generator) -> Poisoning:
        """Dirty-label poisoning: the ``draw_poisoned`` images, stamped with ``apply`` and
        relabelled to the target class."""
        chosen = self.draw_poisoned(data, rate, generator).sort().values
        x = data.x.clone()
        y = data.y.clone()
        if len(chosen):
            x[chosen] = self.apply(x[chosen])
            y[chosen] = self.target_labels(data.y[chosen])
        return Poisoning(LabeledTensors(x, y), chosen)

    def target_class_share(self, data: LabeledTensors, rate: float, generator: torch.Generator) -> Tensor:
        """For clean-label attacks: ``round(rate * n_target)`` target-class indices, drawn with
        ``generator``, sorted (``rate`` in [0, 1] of the target class)."""
        if self.all_to_all:
            raise BdtoolError(f"'{self.name}' is a clean-label attack (it keeps every label, poisoning only the target "
                              "class) and cannot be all-to-all; use a dirty-label attack with --target all-to-all")
        if not 0.0 <= rate <= 1.0:
            raise BdtoolError(f"poison rate of a clean-label attack (a share of the target class) must be in [0, 1], got {rate}")
        candidates = torch.nonzero(data.y == self.target_class).flatten()
        n_poison = int(round(rate * len(candidates)))
        return candidates[torch.randperm(len(candidates), generator=generator)[:n_poison]].sort().values


# --------------------------------------------------------------------------- defenses

class Knowledge(str, enum.Enum):
    """What the defender of a row knows about the backdoor (docs/architecture.md, "Threat models").

    Ordered: ``none`` < ``target`` (the target label only) < ``trigger`` (the attack: trigger and
    target). The runner hands a defense only what its row's knowledge allows.
    """

    NONE = "none"
    TARGET = "target"
    TRIGGER = "trigger"

    @property
    def rank(self) -> int:
        return _KNOWLEDGE_ORDER.index(self)

    @property
    def phrase(self) -> str:
        """How a row label names it: "trigger", "target label", "none"."""
        return {"none": "none", "target": "target label", "trigger": "trigger"}[self.value]

    @classmethod
    def parse(cls, text: str) -> "Knowledge":
        """``trigger|target|none``; ``bdk`` is an alias of ``trigger``."""
        value = str(text).strip().lower()
        if value == "bdk":
            return cls.TRIGGER
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"knowledge must be trigger, target or none, got {text!r}") from None


_KNOWLEDGE_ORDER = (Knowledge.NONE, Knowledge.TARGET, Knowledge.TRIGGER)


@dataclass
class DefenseContext:
    """What a defense may see (docs/architecture.md, "Threat models").

    ``attack`` is set only under knowledge ``trigger``; ``target_class`` only under ``target`` or
    ``trigger``. ``train`` is set only for defenses that declare ``needs_training_set``
    (retraining). Defenses never see the evaluation half.
    """

    unlearn: LabeledTensors
    num_classes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    attack: Attack | None = None
    target_class: int | None = None
    """The target label, known to the defender in the `target` threat model (not the trigger)."""
    draw_unlearn: Callable[[int | None], LabeledTensors] | None = None
    """Draws n samples from the unseen pool, optionally only of one class (same n, same seed; all
    of that class's samples when the pool holds fewer than n)."""
    train: LabeledTensors | None = None
    train_recipe: "TrainConfig | None" = None
    progress: ProgressFn = _no_progress
    log_metric: MetricLogFn = _no_metric
    report_detection: DetectionFn = _no_detection
    """A defense that decides whether there is a backdoor at all (threat model ``none``) reports
    its verdict here, once per run (``DetectionReport``)."""

    @property
    def bdk(self) -> bool:
        return self.attack is not None

    @property
    def knowledge(self) -> Knowledge:
        if self.attack is not None:
            return Knowledge.TRIGGER
        return Knowledge.TARGET if self.target_class is not None else Knowledge.NONE


class Defense(_Parametrised, ABC):
    """A backdoor defense. Subclasses set ``name``, ``label``, the knowledge flags and ``Params``."""

    label: ClassVar[str] = ""
    """Row label as the paper writes it ("actFT", "Ours")."""
    description: ClassVar[str] = ""
    requires_trigger: ClassVar[bool] = False
    """True = needs backdoor knowledge (BDK) and refuses to run without the attack."""
    accepts_trigger: ClassVar[bool] = False
    """True = uses the trigger when given (with or without being required)."""
    requires_target_label: ClassVar[bool] = False
    """True = needs at least the target label (threat model ``target``)."""
    accepts_target_label: ClassVar[bool] = False
    """True = uses the target label when given without the trigger."""
    needs_training_set: ClassVar[bool] = False
    default_rows: ClassVar[tuple[str, ...]] = ()
    """The rows (``--defense`` texts) this defense contributes to the default ``bdtool compare``;
    empty = just its name. The core never names a defense: each declares its own rows."""
    row_order: ClassVar[int] = 100
    """Where its rows go in the default comparison (lower first, then by name)."""
    uses_attack_target: ClassVar[bool] = False
    """True = with the trigger it also uses the attack's (single) target class: refused under
    knowledge ``trigger`` on an all-to-all backdoor, which has none (docs/attacks.md, "All-to-all")."""
    in_default_comparison: ClassVar[bool] = True
    """False: a plain ``bdtool compare`` (no ``--defense``) leaves this defense out; it runs only
    when a row names it (e.g. a defense too slow for the default comparison)."""

    @classmethod
    def required_knowledge(cls) -> Knowledge:
        """The least a row must know for this defense to run."""
        if cls.requires_trigger:
            return Knowledge.TRIGGER
        return Knowledge.TARGET if cls.requires_target_label else Knowledge.NONE

    @classmethod
    def usable_knowledge(cls) -> tuple[Knowledge, ...]:
        """Every threat model under which this defense runs and behaves differently."""
        levels = [k for k in _KNOWLEDGE_ORDER if k.rank >= cls.required_knowledge().rank]
        usable = [Knowledge.NONE]
        if cls.requires_target_label or cls.accepts_target_label:
            usable.append(Knowledge.TARGET)
        if cls.requires_trigger or cls.accepts_trigger:
            usable.append(Knowledge.TRIGGER)
        return tuple(k for k in levels if k in usable)

    @classmethod
    def effective_knowledge(cls, granted: Knowledge) -> Knowledge:
        """What the defense actually receives when ``granted`` is allowed: the most it can use
        without exceeding ``granted``. ValueError when ``granted`` is below what it requires."""
        fitting = [k for k in cls.usable_knowledge() if k.rank <= granted.rank]
        if not fitting:
            raise ValueError(
                f"defense '{cls.name}' needs knowledge '{cls.required_knowledge().value}' "
                f"(it cannot run under '{granted.value}')")
        return fitting[-1]

    def defend(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        """Run the defense on a copy of ``model``; the model passed in is never modified."""
        if self.requires_trigger and ctx.attack is None:
            raise DefenseInputError(
                f"defense '{self.name}' needs backdoor knowledge (the trigger); run it with knowledge=trigger"
            )
        if self.requires_target_label and ctx.target_class is None:
            raise DefenseInputError(
                f"defense '{self.name}' needs the target label; run it with knowledge=target or trigger"
            )
        if self.needs_training_set and ctx.train is None:
            raise DefenseInputError(f"defense '{self.name}' needs the training set")
        if len(ctx.unlearn) == 0 and not self.needs_training_set:
            raise DefenseInputError(f"defense '{self.name}' needs at least one unlearning sample")
        work = copy.deepcopy(model).to(ctx.device)
        defended = self.apply(work, ctx)
        bad = non_finite_tensor(defended)
        if bad is not None:  # a diverged run is said, never scored
            raise FloatingPointError(f"{self.name}: the defended model holds NaN/inf ({bad}); a training defense "
                                     "diverged: lower its learning rate")
        return defended.eval()

    @abstractmethod
    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        """Defend ``model`` (already a private copy on ``ctx.device``) and return the result;
        ``defend`` refuses it if it holds NaN/inf and returns it in eval mode (the template owns
        both, so no defense repeats them)."""


def non_finite_tensor(model: nn.Module) -> str | None:
    """The name of the first floating tensor of ``model``'s state holding NaN or inf, else None."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


class Repair(_Parametrised, ABC):
    """A step run after a defense to restore utility (the paper's repair, §B.2)."""

    description: ClassVar[str] = ""
    is_default: ClassVar[bool] = False
    """The repair a row's ``repair=<lr>`` means (``repair=NAME:<lr>`` names any other)."""

    def repair(self, model: nn.Module, ctx: DefenseContext) -> nn.Module:
        work = copy.deepcopy(model).to(ctx.device)
        return self.apply(work, ctx)

    @abstractmethod
    def apply(self, model: nn.Module, ctx: DefenseContext) -> nn.Module: ...


# --------------------------------------------------------------------------- metrics


@dataclass
class MetricProbe:
    """What a metric that measures the defended model itself (``Metric.needs_model``) may use,
    handed over by the runner after the defense (docs/architecture.md, "Metrics").

    It never holds the evaluation half: ``asr`` and ``acc`` score a model on it and return only the
    number, so a metric can train on the attack and the unseen pool (``pool``, where D_U comes
    from) and be scored like every other, but never see an evaluation image."""

    attack: Attack
    pool: LabeledTensors
    num_classes: int
    device: torch.device
    seed: int
    asr: Callable[[nn.Module], float]
    """The ASR of a model on the evaluation half (``evaluation.evaluate``)."""
    acc: Callable[[nn.Module], float]
    """The clean accuracy of a model on the evaluation half."""
    train_recipe: "TrainConfig | None" = None
    """The victim's SGD recipe (lr, momentum, weight decay: the victim's optimiser settings)."""
    cache: dict[Any, Any] = field(default_factory=dict)
    """Shared by the metrics of one run (two metrics of one retuned model retune it once)."""


class Metric(ABC):
    """A number computed from an evaluation, optionally relative to the victim (reference).

    Every registered metric is computed for every defense run, logged to its MLflow run under
    ``name`` and available as a table column (``bdtool compare --metric NAME``), except an
    ``opt_in`` metric, computed only when a comparison names it. A metric that ``needs_model``
    first ``measure``s the defended model (its value lands in ``EvalResult.extra[name]``, where
    ``compute`` reads it).
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    description: ClassVar[str] = ""
    header: ClassVar[str] = ""
    """Column header in tables (default: the name)."""
    percent: ClassVar[bool] = False
    """The value is a fraction in [0, 1], shown ×100 in tables."""
    relative: ClassVar[bool] = False
    """Needs the victim's evaluation as ``reference`` (not shown for the "Before" row)."""
    column_order: ClassVar[int] = 100
    """Where its column goes in the default table (lower first, then by name)."""
    mlflow_scale: ClassVar[float] = 1.0
    """What the value is multiplied by when logged to MLflow, so that every built-in metric is a
    fraction in [0, 1] there (Score and ClassScore, points 0–100 in tables, are logged × 0.01);
    docs/ui.md, "Units"."""
    plot: ClassVar[str] = ""
    """Its place in a comparison's plots (core/experiment/report.py, ``plot``): ``bar`` (a bar per
    row in the bar chart), ``bar+before`` (also its Before value as a line), ``curve`` (its mean
    against n when the comparison has several n), or empty (not plotted). The core names no metric:
    the built-ins declare theirs (ASR, ACC with its Before line, CTCA bars; the Score curve)."""
    measures_removal: ClassVar[bool] = False
    """Measures how much of a backdoor was removed (Score, DER): undefined, NaN and shown "-", on a
    victim without a backdoor (poison rate 0), where there is nothing to remove."""

    needs_model: ClassVar[bool] = False
    """Measures the defended model itself (``measure``, with a ``MetricProbe``), not only its
    evaluation; NaN ("-") where there is no defended model (the Before row)."""
    opt_in: ClassVar[bool] = False
    """Computed only when a comparison names it (``--metric NAME``): it costs more than reading the
    evaluation (e.g. training a copy of the model)."""

    @abstractmethod
    def compute(self, result: "EvalResult", reference: "EvalResult | None" = None) -> float: ...

    def measure(self, model: nn.Module, probe: MetricProbe) -> float:
        """For a ``needs_model`` metric: its number for the defended ``model`` (never modified)."""
        raise NotImplementedError(f"metric '{self.name}' declares needs_model but has no measure()")

    def value_range(self, reference: "EvalResult | None" = None) -> tuple[float, float] | None:
        """The values ``compute`` can give; one outside it is a bug in the metric or in what it was
        given, caught by ``compute_metrics`` (the run logs the error, the table shows "-"), never
        printed as a result. Default: [0, 1] for a ``percent`` metric, unchecked otherwise."""
        return (0.0, 1.0) if self.percent else None


# --------------------------------------------------------------------------- data and models


class DatasetSource(ABC):
    """Where a dataset comes from. ``load`` raises DataNotFoundError saying how to get it.

    A source that declares ``takes_location`` is named ``NAME:LOCATION`` (``--dataset
    folder:PATH``) and built with that location; the others take none."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    takes_location: ClassVar[bool] = False
    victim_recipe: ClassVar["TrainConfig | None"] = None
    """The SGD recipe bdtool trains a victim with on this dataset (epochs, lr, batch size, ...);
    None: the core's default for colour 32x32 sets (``victim_spec.DEFAULT_RECIPE``, 40 epochs)."""

    def __init__(self, location: str | None = None) -> None:
        self.location = location

    @abstractmethod
    def load(self, data_dir: str | None = None, download: bool = False) -> "DataBundle": ...


class ModelArchitecture(ABC):
    """A model family, built for a dataset's channels, image size and number of classes."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abstractmethod
    def build(self, in_channels: int, image_size: int, num_classes: int) -> nn.Module: ...
