"""Opening and ending a run (``tracked_run``, the one way bdtool opens one), and what every run
records: the standard tags (version, device, host, process, commit), flat params and its
description (docs/architecture.md, "MLflow")."""

from __future__ import annotations

import functools
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

import bdtool
from bdtool.core import interrupts
from bdtool.core.tracking.tags import (DESCRIPTION_TAG, DEVICE_TAG, ERROR_TAG, GIT_COMMIT_TAG, HOST_TAG, PID_TAG,
                                       TORCH_TAG, VERSION_TAG)


class RunFailed(Exception):
    """Raised inside ``tracked_run`` after the run's work is done, to end it FAILED with ``reason``
    as its ``ERROR_TAG`` (a comparison whose rows failed); ``tracked_run`` swallows it, so the code
    after the ``with`` block goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@contextmanager
def tracked_run(on_error: Callable[[BaseException], None] | None = None, **start_run_kwargs: Any) -> Iterator[Any]:
    """``mlflow.start_run`` that always ends the run with the right status: FINISHED, FAILED on an
    exception, KILLED on Ctrl-C or a signal (``KeyboardInterrupt``, bdtool.cli.signals); the
    exception propagates. ``on_error(exc)`` runs inside the run before it is ended FAILED (to tag
    it with the error). ``raise RunFailed(reason)`` in the block ends it FAILED with ``reason`` as
    its ``ERROR_TAG`` and is not propagated. The one way bdtool opens a run."""
    import mlflow  # heavy: imported on use (core/tracking/store.py)

    interrupts.check()
    try:
        run = mlflow.start_run(**start_run_kwargs)
    except Exception as exc:  # a signal's raise swallowed on the way leaves the store's connection half-used
        interrupts.raise_if_pending(exc)
        raise
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except RunFailed as exc:
        mlflow.set_tag(ERROR_TAG, exc.reason[:5000])
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as exc:
        if interrupts.pending() is not None:  # an error while a stop was pending: the stop, not a failed run
            status = "KILLED"
            interrupts.raise_if_pending(exc)
        if on_error is not None:
            on_error(exc)
        raise
    finally:
        _end_run(run.info.run_id, status)


def _end_run(run_id: str, status: str) -> None:
    """``mlflow.end_run(status)``; after a stop, a second try on a fresh client if the first
    fails (the interrupted connection), so that the stop is not replaced by the store's error."""
    import mlflow  # heavy: imported on use (core/tracking/store.py)

    try:
        mlflow.end_run(status)
    except Exception:
        if status != "KILLED":
            raise
        try:  # end_run pops the active run before it writes the status: only the write is left
            mlflow.MlflowClient().set_terminated(run_id, status)
        except Exception:  # noqa: BLE001 - the store is gone: the next command marks it (orphans)
            pass


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit bdtool runs from (tagged on every run); asked of git once per process."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def standard_tags(device: torch.device) -> dict[str, str]:
    import socket

    tags = {VERSION_TAG: bdtool.__version__, DEVICE_TAG: str(device),
            TORCH_TAG: torch.__version__, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    commit = git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    return tags


def log_params_flat(params: dict[str, Any], prefix: str = "") -> None:
    import mlflow  # heavy: imported on use (core/tracking/store.py)

    flat = {f"{prefix}{k}": ("" if v is None else str(v))[:6000] for k, v in params.items()}
    if flat:
        mlflow.log_params(flat)


def set_description(text: str) -> None:
    """The active run's description (Markdown; shown on its page in the UI)."""
    import mlflow  # heavy: imported on use (core/tracking/store.py)

    mlflow.set_tag(DESCRIPTION_TAG, text[:60000])
