"""What one comparison runs (``CompareConfig``): the victim, the rows, the sizes and seeds, what
is logged and shown. Its own module so that the runner and the report both read it without
importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field

from bdtool.core.experiment.rows import RowSpec
from bdtool.core.experiment.victim_spec import VictimSpec


@dataclass
class CompareConfig:
    spec: VictimSpec
    rows: list[RowSpec]
    samples: list[int] = field(default_factory=lambda: [50])
    seeds: int = 3
    log_models: bool = True
    output_dir: str | None = None
    """Also copy the summary (Markdown, CSV, JSON, plots) here, as logged to the parent run."""
    metrics: list[str] = field(default_factory=list)
    """The metric columns of the table, in order; empty = every registered metric. Every
    registered metric is computed and logged whatever is shown."""
    resume: str | None = None
    """A comparison's parent run id, or ``auto``: continue it (core/experiment/resume.py)."""
    config_toml: str | None = None
    """The comparison as TOML (cli/config_file.py), logged with its run as ``config.toml``."""
