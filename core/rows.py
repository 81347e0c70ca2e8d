"""Comparison rows: ``NAME[:key=value,...]`` with reserved keys ``bdk`` and ``repair``
(DESIGN.md §8). All validation happens here, before any work starts or any run is created."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bdtool.core.errors import InvalidParameterError
from bdtool.core.interfaces import Defense
from bdtool.core.params import coerce

REPAIR_NAME = "finetune"
"""The repair step of the supplement (§B.2): one epoch of fine-tuning on D_U."""


@dataclass
class RowSpec:
    text: str
    defense_cls: type[Defense]
    defense_options: dict[str, str]
    bdk: bool
    repair_lr: float | None
    params: Any = field(default=None)

    @property
    def defense_name(self) -> str:
        return self.defense_cls.name

    @property
    def label(self) -> str:
        """The paper's row label: "Ours(BDK) +repair", "actFT", "NAD", "Ours(¬BDK)"."""
        base = self.defense_cls.label or self.defense_cls.name
        if self.defense_cls.accepts_trigger and not self.defense_cls.requires_trigger:
            base += "(BDK)" if self.bdk else "(¬BDK)"
        if self.defense_options:
            base += " [" + ",".join(f"{k}={v}" for k, v in sorted(self.defense_options.items())) + "]"
        if self.repair_lr is not None:
            base += " +repair" + ("" if self.repair_lr == 1e-2 else f"(η={self.repair_lr:g})")
        return base

    def make_defense(self) -> Defense:
        return self.defense_cls(self.params)


def split_row_text(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.strip().partition(":")
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidParameterError(f"--defense {text}: '{part}' is not key=value")
        if key.strip() in options:
            raise InvalidParameterError(f"--defense {text}: '{key.strip()}' is given twice")
        options[key.strip()] = value.strip()
    if not name:
        raise InvalidParameterError(f"--defense '{text}': missing the defense name")
    return name.strip(), options


def parse_row(text: str, default_bdk: bool, registries) -> RowSpec:
    """Parse and fully validate one ``--defense`` value against the registries."""
    name, options = split_row_text(text)
    cls = registries.defenses.get(name)
    bdk = default_bdk
    if "bdk" in options:
        bdk = coerce(options.pop("bdk"), bool, f"--defense {text}: bdk")
    repair_lr = None
    if "repair" in options:
        raw = options.pop("repair")
        if raw.lower() not in ("none", "off", "false", ""):
            repair_lr = coerce(raw, float, f"--defense {text}: repair")
            if repair_lr <= 0:
                raise InvalidParameterError(f"--defense {text}: repair learning rate must be > 0")
            registries.repairs.get(REPAIR_NAME)
    if cls.requires_trigger and not bdk:
        raise InvalidParameterError(
            f"--defense {text}: '{name}' needs backdoor knowledge (the trigger) and cannot run with bdk=false"
        )
    if not cls.accepts_trigger and not cls.requires_trigger:
        bdk = False  # the defense never uses the trigger; do not claim it had it
    params = cls.make_params(options)
    return RowSpec(text=text, defense_cls=cls, defense_options=options, bdk=bdk, repair_lr=repair_lr, params=params)


def default_row_texts(registries) -> list[str]:
    """``ours`` with and without backdoor knowledge, with repair, then every other defense."""
    texts: list[str] = []
    if "ours" in registries.defenses:
        texts += ["ours", "ours:bdk=false"]
        if REPAIR_NAME in registries.repairs:
            texts.append("ours:repair=0.01")
    texts += [n for n in registries.defenses.names() if n != "ours"]
    return texts


def parse_rows(texts: list[str], default_bdk: bool, registries) -> list[RowSpec]:
    rows = [parse_row(t, default_bdk, registries) for t in texts]
    labels = [r.label for r in rows]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise InvalidParameterError(f"the same row is asked for twice: {', '.join(dupes)}")
    return rows
