"""The ``bdtool`` command group. Domain errors (BdtoolError) become one line and exit code 1."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow prints "View run ... at: URL" on stdout when a run ends on a tracking server: it would
# break --json (stdout is JSON and nothing else); bdtool says where runs are itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# MLflow's INFO lines ("Updating database tables", alembic's migrations) are noise on a user's
# stderr; ``bdtool -v`` shows them.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

import json
import sys
from typing import Any

import click

import bdtool
from bdtool.cli.options import dry_run_option, env_options, victim_options
from bdtool.cli.preflight import preflight
from bdtool.core import interrupts
from bdtool.core.compute.device import resolve_device
from bdtool.core.errors import BdtoolError, InvalidParameterError, UnknownNameError
from bdtool.core.experiment.progress import ProgressPrinter
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.victim import get_victim
from bdtool.core.experiment.victim_spec import VictimSpec
from bdtool.core.params import params_to_dict, parse_key_values
from bdtool.plugins import get_registries


def report_orphans(tracking_uri: str | None) -> None:
    """End KILLED the runs left RUNNING by a bdtool process of this host that is gone
    (``tracking.mark_orphans``) and say so in one line on stderr. Every command that opens the
    store calls it once the store passed ``preflight`` and its arguments were checked; a store
    that cannot be read is left to the command itself to report."""
    from bdtool.core.tracking.orphans import mark_orphans

    try:
        report = mark_orphans(tracking_uri)
    except Exception:  # noqa: BLE001 - housekeeping only: the command reports a broken store itself
        return
    if report.killed:
        click.echo(f"marked {len(report.killed)} run(s) KILLED whose process is gone (left by a killed bdtool)",
                   err=True)


class OneLineUsageError(click.ClickException):
    """A usage error as one line, ``Error: <what is wrong> (see bdtool CMD --help)``, exit code 2:
    click's own form spreads it over four lines (usage, hint, blank, error)."""

    exit_code = 2

    @classmethod
    def of(cls, exc: click.UsageError) -> "OneLineUsageError":
        where = exc.ctx.command_path if exc.ctx is not None else "bdtool"
        return cls(f"{one_line(exc.format_message())} (see {where} --help)")


class BdtoolGroup(click.Group):
    """Turns user-facing errors into one clear line (no traceback) and a non-zero exit, and a
    signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) into KILLED runs, one line and exit 128 + N
    (``bdtool.cli.signals``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if any("\x00" in arg for arg in args):  # only in-process: a shell cannot pass one
            raise OneLineUsageError("an argument holds a NUL character, which no file name or value can hold")
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise OneLineUsageError.of(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        from bdtool.cli.signals import exit_code_of, name_of, raising_interrupted

        with raising_interrupted():
            try:
                result = super().invoke(ctx)
                interrupts.check()  # a signal whose raise was swallowed after the last run still counts
                return result
            except (InvalidParameterError, UnknownNameError) as exc:  # a usage error: exit 2, as click's
                raise OneLineUsageError(one_line(str(exc) + stale_hint(exc))) from None
            except BdtoolError as exc:
                raise click.ClickException(one_line(str(exc))) from None
            except click.UsageError as exc:  # one line too, still exit 2 (click's code for usage errors)
                raise OneLineUsageError.of(exc) from None
            except click.ClickException as exc:  # click's errors echo the value the user gave
                exc.message = one_line(exc.message)
                raise
            except OSError as exc:  # the file system refused a path the user gave (too long, not allowed, ...)
                where = f" ({one_line(str(exc.filename))[:200]})" if exc.filename else ""
                raise click.ClickException(f"{exc.strerror or exc}{where}") from None
            except KeyboardInterrupt as exc:  # tracked_run has ended the open runs KILLED
                end_active_runs("KILLED")
                click.echo(f"interrupted by {name_of(exc)}: open MLflow runs were marked KILLED", err=True)
                raise click.exceptions.Exit(exit_code_of(exc)) from None


def stale_hint(exc: Exception) -> str:
    """For an unknown name on a stale install (built-in entry points missing from its metadata):
    the fix, on the same line."""
    if not isinstance(exc, UnknownNameError):
        return ""
    from bdtool.plugins.manager import STALE

    missing = [f.name for f in get_registries().failures if f.error == STALE]
    return f"; this install is stale (built-in plugins {', '.join(missing)} {STALE})" if missing else ""


def one_line(text: str) -> str:
    """``text`` as one printable line: control characters (newlines, escapes, bells) written as
    Python escapes, so a value the user gave cannot break the line or drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\t" else repr(ch)[1:-1] for ch in text)


def end_active_runs(status: str) -> None:
    """A run still active here (a signal between ``start_run`` and ``tracked_run``'s ``try``)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    for _ in range(100):  # nested runs at most a few deep
        try:
            if mlflow.active_run() is None:
                return
            mlflow.end_run(status)
        except Exception:  # noqa: BLE001 - the store is gone: the next command marks them (orphans)
            return


@click.group(cls=BdtoolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(bdtool.__version__, prog_name="bdtool")
@click.option("-q", "--quiet", is_flag=True, envvar="BDTOOL_QUIET", show_envvar=True,
              help="No progress or notes on stderr: only results (stdout) and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Also MLflow's own log lines (INFO) on stderr.")
@click.pass_context
def main(ctx: click.Context, quiet: bool, verbose: bool) -> None:
    """Remove backdoors from image classifiers and compare defenses fairly.

    \b
    Examples:
      bdtool compare                               # every default row on the digits victim
      bdtool compare --defense ours-proj:knowledge=none --samples 50 --seeds 3
      bdtool scan --victim model.safetensors --model small-cnn --dataset digits
      bdtool show latest                           # the last comparison's table again
      bdtool ui                                    # the MLflow UI on 127.0.0.1:5000

    Common options also come from the environment: BDTOOL_DEVICE, BDTOOL_DATA_DIR,
    BDTOOL_EXPERIMENT (or MLFLOW_EXPERIMENT_NAME), BDTOOL_TRACKING_URI (or MLFLOW_TRACKING_URI),
    BDTOOL_EXECUTOR, BDTOOL_QUIET; NO_COLOR turns styling off.
    """
    if quiet and verbose:
        raise click.UsageError("-q and -v contradict each other: give one")
    ctx.obj = {"quiet": quiet, "verbose": verbose}
    if verbose:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"
    if os.environ.get("NO_COLOR"):  # https://no-color.org: any non-empty value
        ctx.color = False


def quiet_requested() -> bool:
    """``bdtool -q``: the root command's --quiet."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("quiet"))


def make_env(device: str, data_dir: str | None, download: bool, tracking_uri: str | None,
             experiment: str, quiet: bool):
    return RunEnv(registries=get_registries(), device=resolve_device(device), data_dir=data_dir, download=download,
                  tracking_uri=tracking_uri, experiment=experiment,
                  progress=ProgressPrinter(enabled=not (quiet or quiet_requested())))


def make_spec(dataset: str, model: str, attack: str, target: int, poison_rate: float, victim_seed: int,
              epochs: int | None, source: str | None = None, model_arg: tuple[str, ...] = (),
              normalize: str | None = None):
    from bdtool.core.experiment.model_source import parse_model_args

    name, _, options = attack.partition(":")
    return VictimSpec(dataset=dataset, model=model, model_args=parse_model_args(model_arg), normalize=normalize,
                      attack=name,
                      attack_options=tuple(sorted(parse_key_values(options, "--attack").items())),
                      target=target, poison_rate=poison_rate, seed=victim_seed, epochs=epochs, source=source)


def say_plan(plan: dict[str, Any], line: str, json_: bool) -> None:
    """A ``--dry-run``'s plan: as JSON with ``--json``, else its one line (``line`` says what would run)."""
    if json_:
        emit_json(plan)
    else:
        click.echo(f"dry run: {line}; every input checked, nothing run")


def emit_json(payload: Any) -> None:
    """Strict JSON on stdout (NaN becomes null)."""
    from bdtool.core.experiment.report import json_safe

    click.echo(json.dumps(json_safe(payload), indent=2, default=str, allow_nan=False))


@main.command()
@victim_options
@env_options
@click.option("--retrain", is_flag=True, help="Train again even if a cached victim exists.")
@dry_run_option
def train(dataset, model, model_arg, normalize, attack, target, poison_rate, victim_seed, epochs, device, data_dir,
          download, tracking_uri, experiment, json_, retrain, dry_run) -> None:
    """Train (or reuse) the poisoned victim model and log it to MLflow.

    \b
    Examples:
      bdtool train                                     # digits, small CNN, BadNets, target 0
      bdtool train --dataset fashion-mnist --attack wanet --target 5 --victim-seed 1
      bdtool train --poison-rate 0                     # a clean victim
    """
    from bdtool.core.experiment.components import load_dataset
    from bdtool.core.experiment.victim import check_victim_spec

    preflight(tracking_uri)
    env = make_env(device, data_dir, download, tracking_uri, experiment, quiet=json_)
    spec = make_spec(dataset, model, attack, target, poison_rate, victim_seed, epochs, None, model_arg, normalize)
    bundle = load_dataset(spec.dataset, env)
    _, recipe = check_victim_spec(spec, env, bundle)
    if dry_run:
        from bdtool.core.interfaces import target_text

        say_plan({"dry_run": True, "dataset": spec.dataset, "model": spec.model, "attack": spec.attack,
                  "target": spec.target, "poison_rate": spec.poison_rate, "seed": spec.seed, "epochs": recipe.epochs},
                 f"would train a {spec.victim_kind()} {spec.dataset}/{spec.model} victim ({spec.attack} target "
                 f"{target_text(spec.target)}, poison rate {spec.poison_rate}, {recipe.epochs} epochs)", json_)
        return
    report_orphans(tracking_uri)
    victim = get_victim(spec, env, retrain=retrain, bundle=bundle)
    result = {
        "victim_hash": victim.config_hash, "run_id": victim.run_id, "reused": victim.reused,
        "train_time_s": round(victim.train_seconds, 2), "epochs": victim.train_config.epochs,
        "acc": victim.before.acc, "asr": victim.before.asr, "ctca": victim.before.ctca,
        "min_class_acc": victim.before.min_class_acc, "n_train": len(victim.data.train),
        "n_poisoned": len(victim.data.poisoned_indices), "n_pool": len(victim.data.pool),
        "n_eval": len(victim.data.evaluation), "device": str(env.device),
    }
    if json_:
        emit_json(result)
        return
    state = "reused cached victim" if victim.reused else f"trained in {victim.train_seconds:.1f}s ({victim.train_config.epochs} epochs)"
    click.echo(f"victim {victim.config_hash}: {state}; MLflow run {victim.run_id}")
    click.echo(f"  ACC {victim.before.acc:.4f}  ASR {victim.before.asr:.4f}  CTCA {victim.before.ctca:.4f}  "
               f"min-class {victim.before.min_class_acc:.4f}  (evaluation half: {len(victim.data.evaluation)} images)")


KIND_ORDER = ("datasets", "models", "attacks", "defenses", "repairs", "metrics", "sweeps")


def _component_row(attr: str, entry, plugin_info: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = entry.obj
    row: dict[str, Any] = {"name": entry.name, "plugin": entry.source, "description": getattr(obj, "description", "")}
    info = plugin_info.get(entry.source) if plugin_info else None
    row.update(distribution=info.distribution if info else None, version=info.version if info else None)
    if attr == "sweeps":
        row.update(rows=list(obj.rows), samples=list(obj.samples), targets=list(obj.targets))
    if attr == "defenses":
        row.update(label=obj.label, requires_trigger=obj.requires_trigger, accepts_trigger=obj.accepts_trigger,
                   requires_knowledge=obj.required_knowledge().value,
                   usable_knowledge=[k.value for k in obj.usable_knowledge()],
                   default_rows=list(obj.default_rows or (entry.name,)) if obj.in_default_comparison else [])
    if attr in ("defenses", "attacks", "repairs"):
        row["params"] = params_to_dict(obj.Params())
    if attr == "metrics":
        row.update(higher_is_better=obj.higher_is_better, percent=obj.percent, relative=obj.relative,
                   header=obj.header or obj.name)
    return row


@main.command("list")
@click.argument("kind", required=False, type=click.Choice(KIND_ORDER))
@click.option("json_", "--json", is_flag=True, help="Print JSON.")
def list_components(kind: str | None, json_: bool) -> None:
    """List datasets, models, attacks, defenses, repairs, metrics and sweeps.

    \b
    Examples:
      bdtool list                                      # everything, by kind
      bdtool list defenses --json                      # with each one's parameters and defaults
    """
    regs = get_registries()
    kinds = [kind] if kind else list(KIND_ORDER)
    by_plugin = {info.name: info for info in regs.plugins}
    payload = {k: [_component_row(k, e, by_plugin) for e in regs.registry(k)] for k in kinds}
    if json_:
        emit_json(payload)
        return
    for k in kinds:
        click.echo(click.style(k, bold=True))
        for row in payload[k]:
            extra = ""
            if k == "defenses":
                extra = f" [knowledge: {'/'.join(row['usable_knowledge'])}]"
            origin = f"{row['distribution']} {row['version']}" if row["distribution"] else row["plugin"]
            click.echo(f"  {row['name']:<16} {row['description']}{extra}  ({origin})")
    _warn_failures(regs)


def _warn_failures(regs) -> None:
    for failure in regs.failures:
        click.echo(f"warning: plugin '{failure.name}' ({failure.distribution}) was skipped: {failure.error}", err=True)


@main.command()
@click.option("json_", "--json", is_flag=True, help="Print JSON.")
def plugins(json_: bool) -> None:
    """List loaded plugins, their distribution and version, and what each registers.

    \b
    Examples:
      bdtool plugins
      bdtool plugins --json
    """
    regs = get_registries()
    rows = []
    for info in regs.plugins:
        registers = {k: [e.name for e in regs.registry(k) if e.source == info.name] for k in KIND_ORDER}
        rows.append({"name": info.name, "module": info.module, "distribution": info.distribution,
                     "version": info.version, "registers": {k: v for k, v in registers.items() if v}})
    failed = [{"name": f.name, "distribution": f.distribution, "error": f.error} for f in regs.failures]
    if json_:
        emit_json({"plugins": rows, "failed": failed})
        return
    for row in rows:
        what = "; ".join(f"{k}: {', '.join(v)}" for k, v in row["registers"].items()) or "(nothing)"
        click.echo(f"{row['name']:<16} {row['distribution']} {row['version']}  {row['module']}  -> {what}")
    for f in failed:
        click.echo(f"{f['name']:<16} FAILED ({f['distribution']}): {f['error']}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
