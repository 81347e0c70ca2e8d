"""What an evaluation of a model measured: the input of every metric (docs/architecture.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EvalResult:
    acc: float
    asr: float
    ctca: float
    per_class_acc: list[float]
    n_eval: int
    target_class: int
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def min_class_acc(self) -> float:
        """The lowest accuracy of a class present in the data (a class with no image has NaN)."""
        present = [a for a in self.per_class_acc if a == a]
        return min(present) if present else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["min_class_acc"] = self.min_class_acc
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalResult":
        d = {k: v for k, v in d.items() if k != "min_class_acc"}
        return cls(**d)
