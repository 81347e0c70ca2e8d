"""bdtool.core.experiment: victims, data splits, evaluation, comparison rows, the runner, reports
and sweeps: the flow of one ``bdtool compare`` (docs/architecture.md)."""
