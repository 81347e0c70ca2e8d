"""A loaded dataset: train and test splits as tensors in [0,1], NCHW (docs/architecture.md,
"Data protocol")."""

from __future__ import annotations

from dataclasses import dataclass, field

from bdtool.core.tensors import LabeledTensors


@dataclass
class DataBundle:
    name: str
    train: LabeledTensors
    test: LabeledTensors
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    fingerprint: str = ""
    """A digest of the contents where they can change under the same name (a folder of the
    user's images); part of a victim's cache key when set."""

    @property
    def channels(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def image_size(self) -> int:
        """The side of a square image; for a non-square one (a folder's ``size=HxW``) the shorter
        side, which is what the built-in architectures size their pooling by."""
        return min(self.image_shape)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.train.x.shape[-2]), int(self.train.x.shape[-1])
