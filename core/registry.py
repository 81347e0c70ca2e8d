"""Name -> component registries with close-match suggestions (docs/architecture.md,
"Layers"): an unknown name is an error that suggests the closest names."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Generic, Iterator, TypeVar

from bdtool.core.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component and the plugin that registered it."""

    name: str
    obj: T
    source: str


class Registry(Generic[T]):
    """A registry of one kind of component ("defense", "attack", ...).

    Names are case-sensitive and unique: registering a name twice is an error that names both
    plugins. Looking up an unknown name is an error that lists the closest matches.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T, source: str = "<unknown>") -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r} from {source}")
        if name in self._entries:
            first = self._entries[name].source
            raise DuplicateNameError(
                f"{self.kind} '{name}' is registered twice: by plugin '{first}' and by plugin "
                f"'{source}'; uninstall one of them or restrict plugins with BDTOOL_PLUGINS",
                kind=self.kind, name=name, plugins=(first, source),
            )
        self._entries[name] = Entry(name, obj, source)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests; a plugin loaded in-process and taken back)."""
        self.entry(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name), kind=self.kind, name=name,
                                   suggestions=tuple(self.suggestions(name))) from None

    def suggestions(self, name: str) -> list[str]:
        """Up to three registered names close to ``name``."""
        return difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = self.suggestions(name)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
        return f"unknown {self.kind} '{name}'{hint} Known: {', '.join(known) or '(none)'}"

    def names(self, pattern: str | None = None) -> list[str]:
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
