"""The core's lookups of components by name, through the registries that ``RunEnv.registries``
carries (docs/architecture.md, "Layers"): attacks, models, datasets and a dataset's victim recipe.
The core never imports a plugin; every lookup is here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from bdtool.core.compute.normalization import Normalization, normalize_inputs, parse_normalization
from bdtool.core.data import DataBundle
from bdtool.core.errors import BdtoolError
from bdtool.core.experiment.model_source import ModelArgs, build_callable_model, is_callable_ref, resolve_callable
from bdtool.core.interfaces import Attack, DatasetSource

if TYPE_CHECKING:
    from bdtool.core.compute.training import TrainConfig
    from bdtool.core.experiment.env import RunEnv


def build_attack(registries: Any, name: str, options: dict[str, Any], target: int) -> Attack:
    cls = registries.attacks.get(name)
    return cls(target_class=target, params=cls.make_params(options))


def build_model(registries: Any, name: str, bundle: DataBundle, args: ModelArgs = (),
                normalize: str | None = None) -> nn.Module:
    """The model ``name`` for ``bundle``'s images: a registered architecture, or ``MODULE:CALLABLE``
    called with ``args`` (core/experiment/model_source.py); with ``normalize`` (``--normalize``) its
    inputs normalised on the way in (core/compute/normalization.py). One line for every problem."""
    if is_callable_ref(name):
        model = build_callable_model(name, args, bundle.channels, bundle.image_shape, bundle.num_classes)
    else:
        if args:
            raise BdtoolError(f"--model-arg is for a model given as MODULE:CALLABLE; {name} is a registered "
                              "architecture built for the data set: drop --model-arg")
        model = registries.models.get(name)().build(bundle.channels, bundle.image_size, bundle.num_classes)
    if normalize:
        model = normalize_inputs(model, model_normalization(normalize, bundle.channels))
    return model


def check_model_name(registries: Any, name: str) -> None:
    """Refuse an unknown model before any work: a registered name, or an importable ``MODULE:CALLABLE``."""
    if is_callable_ref(name):
        resolve_callable(name)
    else:
        registries.models.get(name)


def model_normalization(text: str, channels: int) -> Normalization:
    """``--normalize TEXT`` for images of ``channels`` channels, or one line saying what is wrong."""
    try:
        return parse_normalization(text, channels)
    except ValueError as exc:
        raise BdtoolError(f"--normalize {exc}") from None


def dataset_source(registries: Any, text: str) -> DatasetSource:
    """The dataset ``NAME`` or ``NAME:LOCATION`` (``folder:PATH``: a source that declares
    ``takes_location``) from the registry; a location given to a source that takes none, or
    missing where one is needed, is one line."""
    name, sep, location = text.partition(":")
    cls = registries.datasets.get(name)
    if cls.takes_location:
        if not sep or not location:
            raise BdtoolError(f"dataset '{name}' needs a location: --dataset {name}:PATH")
        return cls(location=location)
    if sep:
        raise BdtoolError(f"dataset '{name}' takes no location ('{text}'); use --dataset {name}")
    return cls()


def load_dataset(name: str, env: "RunEnv") -> DataBundle:
    return dataset_source(env.registries, name).load(env.data_dir, env.download)


def victim_recipe(registries: Any, dataset: str) -> "TrainConfig | None":
    """The training recipe the dataset ``NAME`` (or ``NAME:LOCATION``) declares for its victims
    (``DatasetSource.victim_recipe``); None when it declares none."""
    return registries.datasets.get(dataset.partition(":")[0]).victim_recipe
