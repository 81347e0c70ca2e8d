"""What a victim is: its configuration (``VictimSpec``) and the victim itself (``Victim``: the
model, its data, its evaluation before any defense and its MLflow run)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

from torch import nn

from bdtool.core.compute.training import TrainConfig
from bdtool.core.data import DataBundle
from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.model_source import model_params
from bdtool.core.experiment.splits import ExperimentData
from bdtool.core.interfaces import Attack
from bdtool.core.params import check_ranges
from bdtool.core.results import EvalResult

DEFAULT_RECIPE = TrainConfig(epochs=40, lr=0.05, batch_size=128)
"""The victim recipe of a dataset that declares none (``DatasetSource.victim_recipe``): colour
32x32 sets, on a GPU. The built-in datasets declare theirs (plugins/builtin/datasets.py)."""


@dataclass(frozen=True)
class VictimSpec:
    dataset: str = "digits"
    model: str = "small-cnn"
    """A registered architecture or ``MODULE:CALLABLE`` (core/experiment/model_source.py)."""
    attack: str = "badnets"
    attack_options: tuple[tuple[str, str], ...] = ()
    target: int = 0
    poison_rate: float = 0.05
    seed: int = 0
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    model_args: tuple[tuple[str, str], ...] = ()
    """``--model-arg`` (key, value) pairs for a ``MODULE:CALLABLE`` model, sorted."""
    normalize: str | None = None
    """``--normalize`` as given (a preset or the numbers): the model's inputs normalised on the way in."""
    source: str | None = None
    """The user's weights (``--victim``: a file, ``runs:/...`` or ``models:/...``) instead of a
    victim bdtool trains; the dataset, attack and target then say how it is evaluated."""

    @property
    def backdoored(self) -> bool:
        """False for a clean victim (poison rate 0: nothing poisoned; its ASR column is the clean
        model's natural rate of going to the target under the trigger). A user's own weights count
        as possibly backdoored."""
        return self.source is not None or self.poison_rate != 0

    def model_params(self) -> dict[str, str]:
        """What the model is beyond its name, for MLflow params: ``model_args`` and ``normalize``
        where given (left out otherwise, so runs before them read the same)."""
        return model_params(self.model_args, self.normalize)

    def victim_kind(self) -> str:
        """``clean`` or ``backdoored``: how tables and MLflow name the victim."""
        return "backdoored" if self.backdoored else "clean"

    def train_config(self, recipe: TrainConfig | None = None) -> TrainConfig:
        """The dataset's ``recipe`` (``DEFAULT_RECIPE`` when None) with this spec's overrides."""
        base = recipe if recipe is not None else DEFAULT_RECIPE
        overrides = {k: v for k, v in (("epochs", self.epochs), ("lr", self.lr), ("batch_size", self.batch_size)) if v is not None}
        config = replace(base, **overrides)
        try:
            check_ranges(config)  # the ranges SGDParams declares beside its fields
            config.validate()
        except ValueError as exc:
            raise BdtoolError(f"training recipe: {exc}") from None
        return config


def clean_spec(spec: VictimSpec) -> VictimSpec:
    """The clean reference of ``spec``: the same dataset, model, seed and recipe, nothing poisoned
    (one cached model per such spec, whichever attack asks for it; see ``config_hash``)."""
    return replace(spec, poison_rate=0.0)


@dataclass
class Victim:
    spec: VictimSpec
    config_hash: str
    attack: Attack
    bundle: DataBundle
    data: ExperimentData
    model: nn.Module
    before: EvalResult
    run_id: str
    reused: bool
    train_seconds: float
    train_config: TrainConfig
    poison_seconds: float = 0.0
    """Wall time of the attack's poisoning (``prepare`` + ``poison``), the clean model's training
    excluded; spent again when a cached victim is reused (the poisoned set is not stored)."""
    clean: "Victim | None" = None
    """The clean model the attack asked for at poisoning time (``AttackContext.clean_model``)."""

    def fresh_copy(self) -> nn.Module:
        return copy.deepcopy(self.model)
