"""Errors a user can fix. The CLI prints their message as one line and exits non-zero."""

from __future__ import annotations


class BdtoolError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class UnknownNameError(BdtoolError, KeyError):
    """A registry lookup of a name nobody registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(BdtoolError):
    """Two plugins registered the same name in one registry."""


class DataNotFoundError(BdtoolError):
    """A dataset's files are missing; the message says how to get them."""


class UnsafeModelFileError(BdtoolError):
    """A model file that is not a plain state dict (we never unpickle untrusted files)."""


class InvalidParameterError(BdtoolError):
    """A parameter value of the wrong type or out of range."""


class DefenseInputError(BdtoolError):
    """A defense cannot run with the inputs it was given (said before it starts)."""
