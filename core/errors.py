"""Errors a user can fix. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class BdtoolError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it. Subclasses carry
    the facts as attributes too (like pluggy's errors carry the plugin), so callers and tests
    never parse the message."""


class UnknownNameError(BdtoolError, KeyError):
    """A registry lookup of a name nobody registered: ``kind``, ``name`` and the ``suggestions``."""

    def __init__(self, message: str, *, kind: str = "", name: str = "", suggestions: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.kind, self.name, self.suggestions = kind, name, tuple(suggestions)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(BdtoolError):
    """Two plugins registered the same name in one registry: ``kind``, ``name`` and ``plugins``
    (the first registration's plugin, then the second's)."""

    def __init__(self, message: str, *, kind: str = "", name: str = "", plugins: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.kind, self.name, self.plugins = kind, name, tuple(plugins)


class DataNotFoundError(BdtoolError):
    """A dataset's files are missing; the message says how to get them."""


class UnsafeModelFileError(BdtoolError):
    """A model file that is not a plain state dict (we never unpickle untrusted files)."""


class InvalidParameterError(BdtoolError):
    """A parameter value of the wrong type or out of range: ``owner`` (the component or option)
    and ``key`` where known."""

    def __init__(self, message: str, *, owner: str = "", key: str = "") -> None:
        super().__init__(message)
        self.owner, self.key = owner, key


class DefenseInputError(BdtoolError):
    """A defense cannot run with the inputs it was given (said before it starts)."""


def first_line(exc: BaseException, limit: int | None = 200) -> str:
    """The first line of ``exc``'s message (its type's name when it has none), cut to ``limit``
    characters: how one-line errors quote the error they come from."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]
