"""``RunEnv``: where and how work runs (the component registries, device, data location, MLflow
store, progress output), handed to every step of a command."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from bdtool.core.experiment.progress import ProgressPrinter


@dataclass
class RunEnv:
    """Where and how work runs: the component registries, device, data location, MLflow store,
    progress output. ``registries`` is a ``bdtool.plugins.Registries`` (the CLI passes the
    process-wide one; tests may pass their own)."""

    registries: Any
    device: torch.device
    data_dir: str | None = None
    download: bool = False
    tracking_uri: str | None = None
    experiment: str = "bdtool"
    progress: ProgressPrinter = field(default_factory=lambda: ProgressPrinter(enabled=False))


def notice(env: RunEnv, text: str) -> None:
    """A line the user should see even with --json (on stderr, which --json leaves free)."""
    if env.progress.enabled:
        env.progress.message(text)
    else:
        print(text, file=sys.stderr, flush=True)
