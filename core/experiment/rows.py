"""Comparison rows: ``NAME[:key=value,...]`` with reserved keys ``knowledge``, ``bdk`` and
``repair`` (docs/architecture.md, "Rows"). All validation happens here, before any work starts or
any run is created.

``knowledge=trigger|target|none`` is the row's threat model (``bdk=true`` is an alias of
``trigger``, ``bdk=false`` of ``none``); a row without it gets ``--knowledge``. The row receives
the most its defense can use within that (a defense that never uses the trigger gets ``none``
under the default ``trigger``); a row that names a knowledge its defense cannot use, or that is
below what it requires, is refused. Retraining-style defenses, which are handed the clean
training set (the poisoned samples removed), are labelled ``oracle``.

``repair=<lr>`` adds the default repair (the registered repair marked ``is_default``: the
supplement's fine-tuning, §B.2) with learning rate lr; ``repair=NAME:<lr>`` adds any registered
repair by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bdtool.core.errors import InvalidParameterError
from bdtool.core.interfaces import Defense, Knowledge, Repair
from bdtool.core.params import coerce, parse_key_values

DEFAULT_REPAIR_LR = 1e-2
"""η the paper recommends (supplement Table 8); rows with another η show it in their label."""


@dataclass
class RowSpec:
    text: str
    defense_cls: type[Defense]
    defense_options: dict[str, str]
    knowledge: Knowledge
    repair_lr: float | None
    params: Any = field(default=None)
    repair_cls: type[Repair] | None = None

    @property
    def bdk(self) -> bool:
        """The row knows the trigger (the paper's "BDK")."""
        return self.knowledge is Knowledge.TRIGGER

    @property
    def knowledge_label(self) -> str:
        """``trigger``, ``target``, ``none``, or ``oracle`` for a defense handed the clean training set."""
        return "oracle" if self.defense_cls.needs_training_set else self.knowledge.value

    @property
    def defense_name(self) -> str:
        return self.defense_cls.name

    @property
    def label(self) -> str:
        """The row label, naming what the row knew: "Ours (trigger) +repair", "Ours (target
        label)", "NAD (none)", "Retraining (oracle)"."""
        base = self.defense_cls.label or self.defense_cls.name
        phrase = "oracle" if self.defense_cls.needs_training_set else self.knowledge.phrase
        base += f" ({phrase})"
        if self.defense_options:
            base += " [" + ",".join(f"{k}={v}" for k, v in sorted(self.defense_options.items())) + "]"
        if self.repair_lr is not None and self.repair_cls is not None:
            name = "" if self.repair_cls.is_default else f" {self.repair_cls.name}"
            base += f" +repair{name}" + ("" if self.repair_lr == DEFAULT_REPAIR_LR else f"(η={self.repair_lr:g})")
        return base

    def make_defense(self) -> Defense:
        return self.defense_cls(self.params)

    def make_repair(self) -> Repair:
        if self.repair_cls is None or self.repair_lr is None:
            raise ValueError(f"row {self.text!r} has no repair")
        return self.repair_cls(self.repair_cls.make_params({"lr": self.repair_lr}))


def split_row_text(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.strip().partition(":")
    options = parse_key_values(rest, f"--defense {text}")
    if not name:
        raise InvalidParameterError(f"--defense '{text}': missing the defense name")
    return name.strip(), options


def default_repair(registries) -> type[Repair]:
    """The registered repair marked ``is_default`` (exactly one must be)."""
    defaults = [entry.obj for entry in registries.repairs if entry.obj.is_default]
    if len(defaults) != 1:
        names = ", ".join(registries.repairs.names()) or "(none)"
        raise InvalidParameterError(
            f"repair=<lr> needs exactly one default repair, found {len(defaults)}; "
            f"write repair=NAME:<lr> with one of: {names}")
    return defaults[0]


def parse_repair(raw: str, text: str, registries) -> tuple[type[Repair] | None, float | None]:
    """``repair=<lr>`` or ``repair=NAME:<lr>`` (``none``/``off`` = no repair)."""
    if raw.lower() in ("none", "off", "false", ""):
        return None, None
    name, sep, lr_text = raw.rpartition(":")
    if not sep:
        lr_text = raw
    lr = coerce(lr_text, float, f"--defense {text}: repair")
    if lr <= 0:
        raise InvalidParameterError(f"--defense {text}: repair learning rate must be > 0")
    cls = registries.repairs.get(name) if sep else default_repair(registries)
    cls.make_params({"lr": lr})  # the repair's own checks, before any work
    return cls, lr


def parse_knowledge(options: dict[str, str], text: str) -> Knowledge | None:
    """The row's own ``knowledge=`` or ``bdk=`` (removed from ``options``); None if neither."""
    if "knowledge" in options and "bdk" in options:
        raise InvalidParameterError(f"--defense {text}: give knowledge= or bdk=, not both")
    if "knowledge" in options:
        try:
            return Knowledge.parse(options.pop("knowledge"))
        except ValueError as exc:
            raise InvalidParameterError(f"--defense {text}: {exc}") from None
    if "bdk" in options:
        bdk = coerce(options.pop("bdk"), bool, f"--defense {text}: bdk")
        return Knowledge.TRIGGER if bdk else Knowledge.NONE
    return None


def parse_row(text: str, default_knowledge: Knowledge, registries, all_to_all: bool = False) -> RowSpec:
    """Parse and fully validate one ``--defense`` value against the registries (``all_to_all``:
    for an all-to-all backdoor, which has no single target label: see ``check_all_to_all``)."""
    name, options = split_row_text(text)
    cls = registries.defenses.get(name)
    explicit = parse_knowledge(options, text)
    granted = explicit or default_knowledge
    repair_cls, repair_lr = parse_repair(options.pop("repair"), text, registries) if "repair" in options else (None, None)
    try:
        knowledge = cls.effective_knowledge(granted)
    except ValueError:
        raise InvalidParameterError(
            f"--defense {text}: '{name}' needs knowledge '{cls.required_knowledge().value}' and cannot run "
            f"with knowledge={granted.value}" + ("" if explicit else " (the --knowledge default)")
        ) from None
    if explicit is not None and knowledge is not explicit:
        usable = ", ".join(k.value for k in cls.usable_knowledge())
        raise InvalidParameterError(
            f"--defense {text}: '{name}' cannot use knowledge={explicit.value} (it uses: {usable}); "
            "drop the key or pick one of those"
        )
    if all_to_all:
        knowledge = check_all_to_all(text, cls, knowledge, explicit)
    params = cls.make_params(options)
    return RowSpec(text=text, defense_cls=cls, defense_options=options, knowledge=knowledge, repair_lr=repair_lr,
                   params=params, repair_cls=repair_cls)


def check_all_to_all(text: str, cls: type[Defense], knowledge: Knowledge, explicit: Knowledge | None) -> Knowledge:
    """A row's knowledge on an all-to-all backdoor (docs/attacks.md, "All-to-all"): there is no
    target label to know, so a defense that needs one, a row under knowledge ``target`` and a
    defense that uses the attack's target class with the trigger are refused in one line; a
    defense that would take the target label under ``trigger`` falls back to ``none``."""
    name = cls.name
    if cls.requires_target_label:
        raise InvalidParameterError(f"--defense {text}: '{name}' needs the target label, which an all-to-all backdoor "
                                    "does not have (every class y has its own target, y + 1 mod K); leave it out")
    if knowledge is Knowledge.TARGET:
        if explicit is Knowledge.TARGET or Knowledge.NONE not in cls.usable_knowledge():
            raise InvalidParameterError(f"--defense {text}: knowledge=target means knowing the target label, which an "
                                        "all-to-all backdoor does not have; use knowledge=trigger or none")
        return Knowledge.NONE
    if knowledge is Knowledge.TRIGGER and cls.uses_attack_target:
        fix = "use knowledge=none" if Knowledge.NONE in cls.usable_knowledge() else "leave it out (it needs the trigger)"
        raise InvalidParameterError(f"--defense {text}: '{name}' with the trigger also uses the attack's single target "
                                    f"class, which an all-to-all backdoor does not have; {fix}")
    return knowledge


def default_row_texts(registries) -> list[str]:
    """Every defense's declared ``default_rows`` (its name if it declares none), ordered by
    ``row_order`` then name; defenses with ``in_default_comparison = False`` are left out. Rows asking for a repair are left out when no default repair exists."""
    texts: list[str] = []
    has_repair = any(entry.obj.is_default for entry in registries.repairs)
    for entry in sorted(registries.defenses, key=lambda e: (e.obj.row_order, e.name)):
        if not entry.obj.in_default_comparison:
            continue
        for text in entry.obj.default_rows or (entry.name,):
            if "repair=" in text and not has_repair:
                continue
            texts.append(text)
    return texts


def default_rows_under(granted: Knowledge, registries,
                       all_to_all: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
    """The default rows that can run under ``granted`` (the ``--knowledge`` default), and the
    ones left out with the reason: ``bdtool compare --knowledge none`` runs every defense that
    needs no knowledge instead of refusing the whole comparison."""
    kept: list[str] = []
    skipped: list[tuple[str, str]] = []
    labels: set[str] = set()
    for text in default_row_texts(registries):
        try:
            row = parse_row(text, granted, registries, all_to_all)
        except InvalidParameterError as exc:
            skipped.append((text, str(exc).split(": ", 1)[-1]))
            continue
        if row.knowledge.rank > granted.rank:
            skipped.append((text, f"it knows more ({row.knowledge.value}) than --knowledge {granted.value}"))
        elif row.label in labels:
            skipped.append((text, f"the same row as another default ({row.label})"))
        else:
            kept.append(text)
            labels.add(row.label)
    return kept, skipped


def parse_rows(texts: list[str], default_knowledge: Knowledge, registries, all_to_all: bool = False) -> list[RowSpec]:
    rows = [parse_row(t, default_knowledge, registries, all_to_all) for t in texts]
    labels = [r.label for r in rows]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise InvalidParameterError(f"the same row is asked for twice: {', '.join(dupes)}")
    return rows
