"""Inter-process file locks for a shared sqlite store (docs/architecture.md, "MLflow").

``flock`` locks belong to an open file description: the kernel releases them when the process
exits, however it exits (a killed process never leaves a stale lock). Where ``fcntl`` is missing
(Windows) the lock is a no-op, as it is for a store that is not a local sqlite file (http)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


@contextmanager
def file_lock(path: str | Path | None, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folder) for the ``with`` block;
    ``on_wait()`` runs once if another process holds it and this one has to wait. ``None``: no lock."""
    if path is None or fcntl is None:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
