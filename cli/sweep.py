"""``bdtool sweep``: regenerate the supplement's Tables 7–10 and Figure 4 as comparisons."""

from __future__ import annotations

from pathlib import Path

import click

from bdtool.cli.compare import compare_and_report, exit_code
from bdtool.cli.main import emit_json, main, make_env, make_spec
from bdtool.cli.completion import plugin_names
from bdtool.cli.config_file import config_option
from bdtool.cli.executors import make_executor
from bdtool.cli.options import (comparison_options, dry_run_option, env_options, executor_options, victim_options,
                               victim_source_option)
from bdtool.cli.preflight import preflight
from bdtool.core.experiment.splits import split_test
from bdtool.core.experiment.components import load_dataset


class SweepCommand(click.Command):
    """``bdtool sweep --help`` lists every registered preset (built-in and plugins') with its description."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        try:
            from bdtool.plugins import get_registries

            presets = [(e.name, e.obj.description) for e in get_registries().sweeps]
        except Exception:  # noqa: BLE001 - help must print even with a broken plugin
            presets = []
        if presets:
            with formatter.section("Presets"):
                formatter.write_dl(presets)
        super().format_epilog(ctx, formatter)


@main.command(cls=SweepCommand)
@click.argument("preset", metavar="PRESET", shell_complete=plugin_names("sweeps"))
@comparison_options("Override the preset's sample sizes; repeatable.",
                    "Write each comparison's tables into this folder (one subfolder per target or victim).")
@click.option("--resume", is_flag=True,
              help="Continue each comparison from the newest one with the same options in the store (a killed "
                   "sweep loses only the runs in flight).")
@victim_source_option
@victim_options
@env_options
@executor_options
@dry_run_option
@config_option
def sweep(preset, samples, seeds, output, no_log_models, resume, victim, dataset, model, model_arg, normalize, attack,
          target, poison_rate, victim_seed, epochs, device, data_dir, download, tracking_uri, experiment, json_, executor, ray_address,
          gpus_per_task, cpus_per_task, dry_run, config) -> None:
    """Run a named grid (PRESET) as one comparison per target or per victim; the presets are
    listed below (bdtool list sweeps: with their rows, sizes and targets).

    \b
    Examples:
      bdtool sweep table7                              # the supplement's Table 7 on digits
      bdtool sweep trigger-free --seeds 3 --output out/ --dry-run
      bdtool sweep figure4 --resume
    """
    preflight(tracking_uri, output)
    env = make_env(device, data_dir, download, tracking_uri, experiment, quiet=json_)
    grid = env.registries.sweeps.get(preset)
    if victim is not None and (len(grid.targets) > 1 or grid.victims):
        from bdtool.core.errors import BdtoolError

        what = (f"{len(grid.victims)} victims of its own" if grid.victims else
                f"one victim per target class ({', '.join(map(str, grid.targets))})")
        raise BdtoolError(f"sweep {preset} trains {what}; your --victim is one model: use a preset over one "
                          "target or bdtool compare")
    pool = len(split_test(load_dataset(dataset, env).test.y).pool_indices)
    sizes = list(samples) or [n for n in grid.samples if n <= pool] or [pool]
    dropped = [n for n in grid.samples if n > pool and not samples]
    if dropped and not json_:
        click.echo(f"{preset}: n = {', '.join(map(str, dropped))} exceed the unseen pool of {dataset} ({pool}); dropped",
                   err=True)
    targets = grid.targets if len(grid.targets) > 1 else [target]
    if dry_run:
        specs = ([make_spec(dataset, model, item.attack, item.target, item.poison_rate, item.seed, epochs, None,
                            model_arg, normalize) for item in grid.victims] if grid.victims else
                 [make_spec(dataset, model, attack, t, poison_rate, victim_seed, epochs, victim, model_arg, normalize)
                  for t in targets])
        return sweep_dry_run(grid, sizes, seeds, specs, env, output, json_, executor, ray_address, gpus_per_task,
                             cpus_per_task)
    if grid.victims:
        return sweep_victims(grid, sizes, seeds, output, no_log_models, resume, dataset, model, epochs, env, json_,
                             executor, ray_address, gpus_per_task, cpus_per_task, model_arg, normalize)
    if not json_:
        click.echo(f"{grid.description}: {len(grid.rows)} rows × n {sizes} × {seeds} seed(s) × target(s) {targets}")
    results = []
    runner = make_executor(executor, ray_address, gpus_per_task, cpus_per_task)
    try:
        for t in targets:
            spec = make_spec(dataset, model, attack, t, poison_rate, victim_seed, epochs, victim, model_arg, normalize)
            out = str(Path(output) / f"target{t}") if output and len(targets) > 1 else output
            results.append(compare_and_report(grid.rows, sizes, seeds, "trigger", spec, env, out, json_,
                                              not no_log_models, executor=runner, resume="auto" if resume else None))
    finally:
        runner.close()
    if len(targets) > 1 and not json_:
        click.echo("\nScore per target class (mean ± std over seeds)")
        labels = [r["label"] for r in results[0]["rows"]]
        click.echo("target  " + "  ".join(f"{label:>18}" for label in labels))
        for t, payload in zip(targets, results):
            cells = [f"{r['score_mean']:.2f} ± {r['score_std']:.2f}" if r["score_mean"] is not None else "failed"
                     for r in payload["rows"]]
            click.echo(f"{t:<6}  " + "  ".join(f"{c:>18}" for c in cells))
    if json_:
        emit_json({"preset": preset, "comparisons": results})
    code = exit_code(results)  # the worst over its comparisons (README, "bdtool compare")
    if code:
        raise click.exceptions.Exit(code)


def sweep_victims(grid, sizes, seeds, output, no_log_models, resume, dataset, model, epochs, env, json_, executor,
                  ray_address, gpus_per_task, cpus_per_task, model_arg=(), normalize=None) -> None:
    """A preset over victims (``Sweep.victims``): one comparison per victim, then the summary over
    victims per victim kind (``victim_summary``)."""
    from bdtool.core.experiment.sweep_summary import format_victim_summary, victim_summary

    if not json_:
        click.echo(f"{grid.description}: {len(grid.rows)} rows × n {sizes} × {seeds} draw(s) of D_U × "
                   f"{len(grid.victims)} victims")
    results = []
    runner = make_executor(executor, ray_address, gpus_per_task, cpus_per_task)
    try:
        for item in grid.victims:
            if not json_:
                click.echo(f"\n== {item.label}")
            spec = make_spec(dataset, model, item.attack, item.target, item.poison_rate, item.seed, epochs, None,
                             model_arg, normalize)
            out = str(Path(output) / item.folder) if output else None
            payload = compare_and_report(grid.rows, sizes, seeds, "trigger", spec, env, out, json_, not no_log_models,
                                         executor=runner, resume="auto" if resume else None)
            payload["victim"] = {"attack": item.attack, "target": item.target, "poison_rate": item.poison_rate,
                                 "seed": item.seed, "kind": item.kind}
            results.append(payload)
    finally:
        runner.close()
    summary = victim_summary(results)
    if json_:
        emit_json({"preset": grid.name, "comparisons": results, "over_victims": summary})
    else:
        click.echo("\n" + format_victim_summary(summary, dataset))
    code = exit_code(results)
    if code:
        raise click.exceptions.Exit(code)


def sweep_dry_run(grid, sizes, seeds, specs, env, output, json_, executor, ray_address, gpus_per_task,
                  cpus_per_task) -> None:
    """``--dry-run``: each of the sweep's comparisons checked as ``compare --dry-run`` checks one."""
    make_executor(executor, ray_address, gpus_per_task, cpus_per_task).close()
    plans = [compare_and_report(grid.rows, sizes, seeds, "trigger", spec, env, None, True, False, dry_run=True)
             for spec in specs]
    if json_:
        emit_json({"preset": grid.name, "dry_run": True, "comparisons": plans})
        return
    runs = sum(p["runs"] for p in plans)
    click.echo(f"dry run: sweep {grid.name}: {len(plans)} comparison(s), {runs} run(s) in all "
               f"({len(grid.rows)} rows × n {sizes} × {seeds} seed(s) each); every input checked, nothing run")
    for plan in plans:
        v = plan["victim"]
        click.echo(f"  {v['kind']} victim {v['attack']} target {v['target']} seed {v['seed']}: {plan['runs']} run(s)")
