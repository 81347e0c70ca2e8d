"""The core's lookups of components by name, through the registries that ``RunEnv.registries``
carries (docs/architecture.md, "Layers"): attacks, models, datasets and a dataset's victim recipe.
The core never imports a plugin; every lookup is here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from bdtool.core.data import DataBundle
from bdtool.core.errors import BdtoolError
from bdtool.core.interfaces import Attack, DatasetSource

if TYPE_CHECKING:
    from bdtool.core.compute.training import TrainConfig
    from bdtool.core.experiment.env import RunEnv


def build_attack(registries: Any, name: str, options: dict[str, Any], target: int) -> Attack:
    cls = registries.attacks.get(name)
    return cls(target_class=target, params=cls.make_params(options))


def build_model(registries: Any, name: str, bundle: DataBundle) -> nn.Module:
    arch = registries.models.get(name)()
    return arch.build(bundle.channels, bundle.image_size, bundle.num_classes)


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
