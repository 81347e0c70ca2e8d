"""``bdtool compare``: the main job (README, "bdtool compare")."""

from __future__ import annotations

from typing import Any

import click

from bdtool.cli.main import emit_json, main, make_env, make_spec, report_orphans
from bdtool.cli.completion import plugin_names
from bdtool.cli.config_file import comparison_toml, config_option
from bdtool.cli.executors import make_executor
from bdtool.cli.options import (comparison_options, dry_run_option, env_options, executor_options, victim_options,
                               victim_source_option)
from bdtool.cli.preflight import preflight


# Exit codes of compare and sweep (README, "bdtool compare"): 0 every run ran; 3 some runs failed
# (tables still printed and written; the comparison run is FAILED); 1 every run failed. A signal
# exits 128 + N (bdtool.cli.signals).
PARTIAL_FAILURE = 3
ALL_FAILED = 1
STORE_FAILED = 4
"""The tracking store failed during the comparison: every result was printed and written to
--output, but not all of it could be logged."""


def exit_code(payloads: list[dict[str, Any]]) -> int:
    """The worst over comparisons: every run of one failed (1) > the store failed (4) > some runs
    failed (3) > none (0)."""
    codes = [0 if not p["runs_failed"] else ALL_FAILED if p["runs_failed"] == p["runs_total"] else PARTIAL_FAILURE
             for p in payloads]
    codes += [STORE_FAILED for p in payloads if p.get("store_error")]
    return next((code for code in (ALL_FAILED, STORE_FAILED, PARTIAL_FAILURE) if code in codes), 0)


def compare_and_report(texts: list[str], samples: list[int], seeds: int, knowledge: str, spec, env, output: str | None,
                       json_: bool, log_models: bool, metrics: list[str] | None = None, executor: Any = None,
                       resume: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Validate the rows (with ``dry_run``: every input, then return the plan and run nothing), run the comparison, print the table (or nothing with --json), write
    ``--output`` files, and return the summary as a dict (with ``parent_run_id``, ``status``,
    ``runs_total`` and ``runs_failed``); failed runs are said in one line on stderr."""
    from bdtool.core.experiment.report import CLASS_REMOVED_MARK, format_text_table
    from bdtool.core.interfaces import ALL_TO_ALL, Knowledge
    from bdtool.core.experiment.rows import parse_rows
    from bdtool.core.experiment.runner import CompareConfig, failed_outcomes, failure_details, run_comparison
    from bdtool.core.experiment.components import check_model_name, dataset_source

    registries = env.registries
    # Validate everything before any work starts or any run is created.
    rows = parse_rows(texts, Knowledge.parse(knowledge), registries, all_to_all=spec.target == ALL_TO_ALL)
    for name in metrics or []:
        registries.metrics.get(name)
    dataset_source(registries, spec.dataset)
    check_model_name(registries, spec.model)
    registries.attacks.get(spec.attack)
    config = CompareConfig(spec=spec, rows=rows, samples=samples, seeds=seeds, log_models=log_models,
                           output_dir=output, metrics=list(metrics or []), resume=resume,
                           config_toml=comparison_toml(texts, samples, seeds, knowledge, list(metrics or []), spec))
    if dry_run:
        return dry_run_payload(config, env, json_)
    report_orphans(env.tracking_uri)
    # Ctrl-C or a signal: the runs are ended KILLED and BdtoolGroup exits 128 + N, reporting nothing.
    result = run_comparison(config, env, executor)
    summary = result.summary
    payload = summary.to_dict()
    payload["parent_run_id"] = result.parent_run_id
    payload["runs_resumed"] = result.resumed
    failed = failed_outcomes(result.outcomes)
    payload.update(status="FAILED" if failed or result.store_error else "FINISHED", runs_total=len(result.outcomes),
                   runs_failed=len(failed), store_error=result.store_error, runs_unlogged=result.unlogged)

    def say_failures() -> None:  # last on stderr, with or without --json
        if result.store_error:
            lost = [f"{result.unlogged} of {len(result.outcomes)} runs"] if result.unlogged else []
            lost += ["the summary"] if result.summary_unlogged else []
            click.echo(f"the tracking store failed during the comparison ({result.store_error}): "
                       f"{' and '.join(lost) or 'part of it'} could not be logged; every result is printed"
                       + (f" and written to {output}" if output else "") + f" (exit code {STORE_FAILED})", err=True)
        if failed and len(failed) == len(result.outcomes):
            click.echo(f"every row failed: {failure_details(result.outcomes)}", err=True)
        elif failed:
            click.echo(f"{len(failed)} of {len(result.outcomes)} runs failed: the comparison run is marked FAILED "
                       f"(exit code {PARTIAL_FAILURE})", err=True)

    if json_:
        say_failures()
        return payload
    click.echo(format_text_table(summary))
    removed = [f"{r.label} n={r.n}" for r in summary.rows if r.class_removed and not r.failed]
    if removed:
        click.echo(f"{CLASS_REMOVED_MARK}: mean CTCA below half of the victim's; these rows removed the target "
                   f"class with the backdoor: {', '.join(removed)}")
    for r in summary.rows:
        if r.seeds_failed:
            click.echo(f"{r.label} n={r.n}: {r.seeds_failed} run(s) failed: {'; '.join(r.errors)}", err=True)
    if result.resumed:
        click.echo(f"resumed: {result.resumed} of {len(result.outcomes)} runs taken FINISHED from the store, "
                   f"{len(result.outcomes) - result.resumed} run now")
    click.echo(f"MLflow parent run {result.parent_run_id or '(none)'} (bdtool ui to browse)"
               + (f"; tables written to {output}" if output else ""))
    say_failures()
    return payload


def register_best_run(payload: dict[str, Any], registration, json_: bool) -> str | None:
    """``--register-best``: the best row's best run (``registry.best_run``) as a registered model
    version, tagged; one line on stderr when nothing can be registered (the table stands)."""
    from bdtool.core import tracking
    from bdtool.core.errors import BdtoolError
    from bdtool.core.experiment.evaluation import to_mlflow_units
    from bdtool.core.tracking.registry import best_run, register_version
    from bdtool.plugins import get_registries

    try:
        run = best_run(payload)
        meta = payload.get("meta", {})
        version = register_version(registration, f"runs:/{run['run_id']}/model", run["run_id"], {
            tracking.DEFENSE_TAG: run["defense"], tracking.ROW_TAG: run["label"],
            tracking.KNOWLEDGE_TAG: run["knowledge"], "bdtool.n": run["n"], "bdtool.seed": run["seed"],
            tracking.VICTIM_HASH_TAG: meta.get("victim_hash"), tracking.VICTIM_RUN_TAG: meta.get("victim_run_id"), "bdtool.comparison_run_id": payload["parent_run_id"],
            **{f"bdtool.{k}": v for k, v in to_mlflow_units(get_registries().metrics, {
                k: v for k, v in (run.get("metrics") or {}).items() if v is not None}).items()}})
    except BdtoolError as exc:
        click.echo(f"--register-best: {exc}", err=True)
        return None
    registered = f"{registration.uri} (version {version}: {run['label']} n={run['n']} seed {run['seed']})"
    if not json_:
        click.echo(f"registered the best row's model as {registered}")
    return registered


def dry_run_payload(config, env, json_: bool) -> dict[str, Any]:
    """``--dry-run``: every check a comparison makes before work (``check_comparison``), the plan
    printed, nothing trained or logged."""
    from bdtool.core.experiment.runner import check_comparison
    from bdtool.core.interfaces import target_text

    plan = check_comparison(config, env).to_dict()
    spec = config.spec
    plan.update(dry_run=True, victim={"dataset": spec.dataset, "model": spec.model, **spec.model_params(),
                                      "kind": spec.victim_kind(),
                                      "attack": spec.attack, "target": spec.target, "poison_rate": spec.poison_rate,
                                      "seed": spec.seed, "source": spec.source})
    if not json_:
        click.echo(f"dry run: {plan['runs']} run(s) = {len(plan['rows'])} row(s) × n {plan['samples']} × "
                   f"{plan['seeds']} seed(s) on {spec.dataset}/{spec.model} ({spec.victim_kind()} victim, "
                   f"{spec.attack} target {target_text(spec.target)}); every input checked, nothing run")
        for label in plan["rows"]:
            click.echo(f"  {label}")
    return plan


@main.command()
@click.option("defenses", "--defense", multiple=True, metavar="NAME[:k=v,...]", shell_complete=plugin_names("defenses", True),
              help="A row: defense name with params; reserved keys knowledge=trigger|target|none (bdk=true|false "
                   "are aliases of trigger|none) and repair=<lr> or repair=NAME:<lr>. Repeatable. Default: the null "
                   "row suppress-target, ours under each knowledge, ours:repair=0.01 and every baseline (not the slower fp, anp, nc, ibau: name them).")
@comparison_options("Unlearning set size n; repeatable. Default 50.",
                    "Also write the table as Markdown, CSV and JSON (and plots) into this folder.")
@click.option("--knowledge", type=click.Choice(["trigger", "target", "none", "bdk"]), default="trigger",
              show_default=True,
              help="Default threat model of rows without knowledge=: trigger (the attack), target (the target "
                   "label only) or none; each row gets the most its defense can use within it (bdk = trigger).")
@click.option("metrics", "--metric", multiple=True, metavar="NAME", shell_complete=plugin_names("metrics"),
              help="A metric column (bdtool list metrics); repeatable, in order. Default: every registered metric. "
                   "All are computed and logged to MLflow either way.")
@click.option("--register-best", default=None, metavar="NAME[@ALIAS]",
              help="Make the defended model of the best row (highest mean ClassScore; its best seed) a new version "
                   "of the MLflow registered model NAME, tagged, with ALIAS (default: best) pointing at it; it loads "
                   "back with --victim models:/NAME@ALIAS.")
@click.option("--resume", default=None, metavar="PARENT_RUN_ID|auto",
              help="Continue that comparison (auto: the newest one with the same victim, rows, --samples and "
                   "--seeds): its FINISHED runs are kept, only the others run.")
@victim_source_option
@victim_options
@env_options
@executor_options
@dry_run_option
@config_option
def compare(defenses, samples, seeds, knowledge, metrics, output, no_log_models, register_best, resume, victim, dataset,
            model, model_arg, normalize, attack, target, poison_rate, victim_seed, epochs, device, data_dir, download, tracking_uri,
            experiment, json_, executor, ray_address, gpus_per_task, cpus_per_task, dry_run, config) -> None:
    """Compare defenses on one victim: Score, ASR, ACC, CTCA and time, tracked in MLflow.

    \b
    Examples:
      bdtool compare                                   # every default row, digits, n = 50, 3 seeds
      bdtool compare --defense ours --defense nad --samples 5 --samples 50
      bdtool compare --attack blend --defense ours-proj:knowledge=none --seeds 3
      bdtool compare --victim model.safetensors --model small-cnn --dataset digits --dry-run
    """
    preflight(tracking_uri, output)
    from bdtool.core.experiment.rows import default_rows_under
    from bdtool.core.interfaces import ALL_TO_ALL, Knowledge

    spec = make_spec(dataset, model, attack, target, poison_rate, victim_seed, epochs, victim, model_arg, normalize)
    registration = None
    if register_best:
        from bdtool.core.errors import BdtoolError
        from bdtool.core.tracking.registry import parse_registration

        registration = parse_registration(register_best, "--register-best", default_alias="best")
        if no_log_models:
            raise BdtoolError("--register-best registers a logged defended model: drop --no-log-models")
        if not spec.backdoored:
            raise BdtoolError("--register-best picks the best ClassScore, which a clean victim (--poison-rate 0) "
                              "does not have")
    env = make_env(device, data_dir, download, tracking_uri, experiment, quiet=json_)
    texts = list(defenses)
    if not texts:
        all_to_all = spec.target == ALL_TO_ALL
        texts, skipped = default_rows_under(Knowledge.parse(knowledge), env.registries, all_to_all)
        for text, reason in skipped:
            if not json_:
                under = "an all-to-all backdoor" if all_to_all else f"--knowledge {knowledge}"
                click.echo(f"default row '{text}' left out under {under}: {reason}", err=True)
    runner = make_executor(executor, ray_address, gpus_per_task, cpus_per_task)
    try:
        payload = compare_and_report(texts, list(samples) or [50], seeds, knowledge, spec, env, output, json_,
                                     not no_log_models, list(metrics), runner, resume, dry_run)
    finally:
        runner.close()
    if registration is not None and not dry_run and payload.get("parent_run_id"):
        payload["registered"] = register_best_run(payload, registration, json_)
    if json_:
        emit_json(payload)
    if dry_run:
        return
    code = exit_code([payload])
    if code:
        raise click.exceptions.Exit(code)
