"""``bdtool compare``: the main job (README, "bdtool compare")."""

from __future__ import annotations

import sys
from typing import Any

import click

from bdtool.cli.main import emit_json, main, make_env, make_spec
from bdtool.cli.options import env_options, victim_options


def compare_and_report(texts: list[str], samples: list[int], seeds: int, knowledge: str, spec, env, output: str | None,
                       json_: bool, log_models: bool, metrics: list[str] | None = None) -> dict[str, Any]:
    """Validate the rows, run the comparison, print the table (or nothing with --json), write
    ``--output`` files, and return the summary as a dict (with ``parent_run_id``)."""
    from bdtool.core.experiment.report import CLASS_REMOVED_MARK, format_text_table
    from bdtool.core.interfaces import Knowledge
    from bdtool.core.experiment.rows import parse_rows
    from bdtool.core.experiment.runner import CompareConfig, run_comparison

    registries = env.registries
    # Validate everything before any work starts or any run is created.
    rows = parse_rows(texts, Knowledge.parse(knowledge), registries)
    for name in metrics or []:
        registries.metrics.get(name)
    registries.datasets.get(spec.dataset)
    registries.models.get(spec.model)
    registries.attacks.get(spec.attack)
    config = CompareConfig(spec=spec, rows=rows, samples=samples, seeds=seeds, log_models=log_models,
                           output_dir=output, metrics=list(metrics or []))
    try:
        result = run_comparison(config, env)
    except KeyboardInterrupt:
        click.echo("interrupted: open MLflow runs were marked KILLED; no results were reported", err=True)
        sys.exit(130)
    summary = result.summary
    payload = summary.to_dict()
    payload["parent_run_id"] = result.parent_run_id
    if json_:
        return payload
    click.echo(format_text_table(summary))
    removed = [f"{r.label} n={r.n}" for r in summary.rows if r.class_removed and not r.failed]
    if removed:
        click.echo(f"{CLASS_REMOVED_MARK}: mean CTCA below half of the victim's; these rows removed the target "
                   f"class with the backdoor: {', '.join(removed)}")
    for r in summary.rows:
        if r.seeds_failed:
            click.echo(f"{r.label} n={r.n}: {r.seeds_failed} run(s) failed: {'; '.join(r.errors)}", err=True)
    click.echo(f"MLflow parent run {result.parent_run_id} (bdtool ui to browse)"
               + (f"; tables written to {output}" if output else ""))
    return payload


@main.command()
@click.option("defenses", "--defense", multiple=True, metavar="NAME[:k=v,...]",
              help="A row: defense name with params; reserved keys knowledge=trigger|target|none (bdk=true|false "
                   "are aliases of trigger|none) and repair=<lr> or repair=NAME:<lr>. Repeatable. Default: the null "
                   "row suppress-target, ours under each knowledge, ours:repair=0.01 and every baseline.")
@click.option("samples", "--samples", multiple=True, type=int, help="Unlearning set size n; repeatable. Default 50.")
@click.option("--seeds", default=3, show_default=True, type=int, help="Seeds per (row, n); results are mean ± std.")
@click.option("--knowledge", type=click.Choice(["trigger", "target", "none", "bdk"]), default="trigger",
              show_default=True,
              help="Default threat model of rows without knowledge=: trigger (the attack), target (the target "
                   "label only) or none; each row gets the most its defense can use within it (bdk = trigger).")
@click.option("metrics", "--metric", multiple=True, metavar="NAME",
              help="A metric column (bdtool list metrics); repeatable, in order. Default: every registered metric. "
                   "All are computed and logged to MLflow either way.")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="Also write the table as Markdown, CSV and JSON (and plots) into this folder.")
@click.option("--no-log-models", is_flag=True, help="Do not log each defended model to MLflow (faster).")
@victim_options
@env_options
def compare(defenses, samples, seeds, knowledge, metrics, output, no_log_models, dataset, model, attack, target, poison_rate,
            victim_seed, epochs, device, data_dir, download, tracking_uri, experiment, json_) -> None:
    """Compare defenses on one victim: Score, ASR, ACC, CTCA and time, tracked in MLflow."""
    from bdtool.core.experiment.rows import default_rows_under
    from bdtool.core.interfaces import Knowledge

    spec = make_spec(dataset, model, attack, target, poison_rate, victim_seed, epochs)
    env = make_env(device, data_dir, download, tracking_uri, experiment, quiet=json_)
    texts = list(defenses)
    if not texts:
        texts, skipped = default_rows_under(Knowledge.parse(knowledge), env.registries)
        for text, reason in skipped:
            if not json_:
                click.echo(f"default row '{text}' left out under --knowledge {knowledge}: {reason}", err=True)
    payload = compare_and_report(texts, list(samples) or [50], seeds, knowledge, spec, env, output, json_,
                                 not no_log_models, list(metrics))
    if json_:
        emit_json(payload)
