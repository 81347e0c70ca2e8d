"""What counts as the tracking store's own failure, not the work's: a comparison that meets one
keeps computing and reports what it could not log (core/experiment/runner.py)."""

from __future__ import annotations

from bdtool.core.errors import BdtoolError, first_line


class ArtifactLogError(BdtoolError):
    """An artifact (a model, a file) could not be written to the store's artifact location."""


def is_store_error(exc: BaseException) -> bool:
    """An error of the tracking store itself, not of the work: MLflow's own errors, the database's
    (SQLAlchemy, sqlite3), a server that stopped answering, or an artifact write that failed
    (``ArtifactLogError``), anywhere in the exception's cause chain. A comparison that meets one
    keeps computing and reports what it could not log (core/experiment/runner.py)."""
    import sqlite3

    from mlflow.exceptions import MlflowException

    kinds: list[type] = [MlflowException, sqlite3.Error, ArtifactLogError]
    try:
        from sqlalchemy.exc import SQLAlchemyError

        kinds.append(SQLAlchemyError)
    except ImportError:  # pragma: no cover - a server-only MLflow client
        pass
    try:
        from requests.exceptions import ConnectionError as RequestsConnectionError, Timeout

        kinds.extend((RequestsConnectionError, Timeout))
    except ImportError:  # pragma: no cover
        pass
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, tuple(kinds)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def store_error_line(exc: BaseException) -> str:
    """One line for a store error: its type and first line."""
    return f"{type(exc).__name__}: {first_line(exc)}"
