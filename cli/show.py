"""``bdtool show``: a past comparison's table again, from the MLflow store alone (docs/ui.md)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from bdtool.cli.main import emit_json, main, report_orphans
from bdtool.cli.completion import comparison_run_ids
from bdtool.cli.options import experiment_option, tracking_uri_option
from bdtool.cli.preflight import preflight
from bdtool.core.errors import BdtoolError


def find_comparison(client, run_ref: str, experiment: str) -> str:
    """The parent run id of ``run_ref``: a run id, or ``latest`` (the newest comparison of
    ``experiment`` that ran to its end: FINISHED, or FAILED because some of its rows failed)."""
    from mlflow.exceptions import MlflowException

    from bdtool.core import tracking

    if run_ref == "latest":
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise BdtoolError(f"no MLflow experiment '{experiment}' in this store")
        # A comparison with failed rows ends FAILED but has its summary; killed or running ones do not.
        runs = [r for r in client.search_runs([exp.experiment_id],
                                              filter_string=f"tags.`{tracking.KIND_TAG}` = 'comparison'",
                                              order_by=["attributes.start_time DESC"], max_results=50)
                if r.info.status in ("FINISHED", "FAILED")]
        if not runs:
            raise BdtoolError(f"no finished comparison in experiment '{experiment}'; run bdtool compare first")
        return runs[0].info.run_id
    try:
        run = client.get_run(run_ref)
    except MlflowException:
        raise BdtoolError(f"no MLflow run '{run_ref}' in this store") from None
    kind = run.data.tags.get(tracking.KIND_TAG)
    if kind != "comparison":
        raise BdtoolError(f"run '{run_ref}' is not a comparison (bdtool.kind={kind}); pass a parent run id")
    return run_ref


@main.command()
@click.argument("run_ref", default="latest", metavar="[PARENT_RUN_ID|latest]", shell_complete=comparison_run_ids)
@tracking_uri_option
@experiment_option
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Also write the comparison's Markdown, CSV, JSON and plots (as logged) into this folder.")
@click.option("json_", "--json", is_flag=True, help="Print the summary JSON on stdout and nothing else.")
@click.option("config", "--config", is_flag=True,
              help="Print the comparison as TOML instead (bdtool compare --config FILE runs it again).")
def show(run_ref: str, tracking_uri: str | None, experiment: str, output: str | None, json_: bool,
         config: bool) -> None:
    """Print a past comparison's table again, from the MLflow store (default: the latest).

    \b
    Examples:
      bdtool show                                      # the latest comparison of experiment bdtool
      bdtool show 4baf557ae20148aa8a4527250a5cc7ac --json
      bdtool show latest --experiment tables --output out/
      bdtool show latest --config > comparison.toml     # then: bdtool compare --config comparison.toml
    """
    preflight(tracking_uri, output)
    report_orphans(tracking_uri)
    import mlflow  # heavy: imported on use
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from bdtool.core import tracking
    from bdtool.core.experiment.output import publish
    from bdtool.core.tracking.serialization import file_sha256
    from bdtool.core.experiment.report import CLASS_REMOVED_MARK, Summary, format_text_table
    from bdtool.plugins import get_registries

    uri = tracking.setup_tracking(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    run_id = find_comparison(client, run_ref, experiment)
    if config:
        from bdtool.core.experiment.runner import CONFIG_ARTIFACT

        try:
            text = mlflow.artifacts.load_text(f"runs:/{run_id}/{CONFIG_ARTIFACT}")
        except (MlflowException, OSError):
            raise BdtoolError(f"comparison run '{run_id}' has no {CONFIG_ARTIFACT} (older comparisons have none: run "
                              "it again to get one)") from None
        click.echo(text, nl=False)
        return
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="summary", dst_path=tmp,
                                                              tracking_uri=uri))
        except (MlflowException, OSError):
            folder = Path(tmp) / "missing"
        if not (folder / "summary.json").is_file():
            raise BdtoolError(f"comparison run '{run_id}' has no summary/summary.json (did it finish?)")
        wrote = client.get_run(run_id).data.tags.get(tracking.SUMMARY_SHA256_TAG)
        found = file_sha256(folder / "summary.json")
        if wrote is not None and found != wrote:
            raise BdtoolError(f"comparison run '{run_id}': its summary/summary.json is not the one the run wrote "
                              f"(sha256 {found[:12]}, logged {wrote[:12]}); it was changed after the run, so it is not "
                              "shown; run the comparison again")
        try:
            data = json.loads((folder / "summary.json").read_text())
        except (ValueError, UnicodeDecodeError):
            raise BdtoolError(f"comparison run '{run_id}': its summary/summary.json is not readable JSON") from None
        if output:
            publish(folder, output)  # file by file, atomically; folders keep their mode
    if json_:
        emit_json({**data, "parent_run_id": run_id})
        return
    metrics = [e.obj for e in get_registries().metrics]
    summary = Summary.from_dict(data, metrics)
    click.echo(format_text_table(summary))
    removed = [f"{r.label} n={r.n}" for r in summary.rows if r.class_removed and not r.failed]
    if removed:
        click.echo(f"{CLASS_REMOVED_MARK}: mean CTCA below half of the victim's; these rows removed the target "
                   f"class with the backdoor: {', '.join(removed)}")
    click.echo(f"MLflow parent run {run_id} (bdtool ui to browse)" + (f"; tables written to {output}" if output else ""))
