"""``bdtool defend``: defend your own model with your own clean images (docs/own-models.md)."""

from __future__ import annotations

from pathlib import Path

import click

from bdtool.cli.main import emit_json, main, make_env, say_plan
from bdtool.cli.completion import plugin_names
from bdtool.cli.options import CLASS, COUNT, SEED, dry_run_option, experiment_option, tracking_uri_option
from bdtool.cli.preflight import preflight
from bdtool.core.compute.device import DEVICE_CHOICES


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


@main.command()
@click.argument("model_file", metavar="MODEL_FILE")
@click.option("--model", "architecture", default="small-cnn", show_default=True, shell_complete=plugin_names("models"),
              help="The architecture MODEL_FILE was trained as: a name (bdtool list models) or MODULE:CALLABLE "
                   "(docs/own-models.md).")
@click.option("model_arg", "--model-arg", multiple=True, metavar="KEY=VALUE",
              help="An argument of a MODULE:CALLABLE model (repeatable).")
@click.option("--normalize", default=None, metavar="MEAN,STD|PRESET",
              help="The model was trained behind Normalize(mean, std): MEAN,STD, per channel M1,M2,M3,S1,S2,S3, "
                   "or imagenet, cifar10, mnist, fashion-mnist.")
@click.option("--data", "data", required=True, metavar="FOLDER[:size=N,channels=C,test=0.3]",
              help="Clean images, one folder per class (or train/ and test/ with class folders); the test part "
                   "(30 % of each class without train/ and test/) is held out to measure the result.")
@click.option("--defense", "row", default="ours", show_default=True, metavar="NAME[:k=v,...]",
              shell_complete=plugin_names("defenses", True),
              help="The defense, as a bdtool compare row (bdtool list defenses).")
@click.option("--target-label", type=CLASS, default=None, help="The backdoor's target class, if you know it.")
@click.option("--trigger-image", type=click.Path(dir_okay=False), default=None,
              help="The trigger as an image the size of your images (needs --target-label).")
@click.option("--trigger-mask", type=click.Path(dir_okay=False), default=None,
              help="Where the trigger is stamped: white = trigger, black = image (default: the trigger's alpha).")
@click.option("--samples", type=COUNT, default=None, help="Clean images the defense may use (default: the whole "
                                                          "training part of the folder).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="The defended model (.safetensors); default MODEL_FILE's name + .defended.safetensors, here.")
@click.option("--no-log-models", is_flag=True, help="Do not log the defended model as an MLflow model too.")
@click.option("--register", default=None, metavar="NAME[@ALIAS]",
              help="Also make the defended model a new version of the MLflow registered model NAME, tagged with "
                   "the defense, knowledge, source digest and metrics, and point ALIAS (default: defended) at it; "
                   "it loads back with --victim models:/NAME@ALIAS.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True, envvar="BDTOOL_DEVICE",
              show_envvar=True, help="auto = CUDA when available.")
@tracking_uri_option
@experiment_option
@click.option("json_", "--json", is_flag=True, help="Print machine-readable JSON on stdout and nothing else.")
@dry_run_option
def defend(model_file, architecture, model_arg, normalize, data, row, target_label, trigger_image, trigger_mask, samples, seed, output,
           no_log_models, register, device, tracking_uri, experiment, json_, dry_run) -> None:
    """Defend MODEL_FILE (.safetensors or a state dict; never unpickled) with clean images; write the
    defended model as .safetensors and log an MLflow run.

    \b
    Examples:
      bdtool defend model.safetensors --model small-cnn --data images/ --defense ours-proj:knowledge=none
      bdtool defend model.pt --data images/ --target-label 0 --trigger-image trigger.png
      bdtool defend model.pt --data images/ --dry-run
    """
    from bdtool.core.errors import BdtoolError

    if output is None:
        stem = Path(model_file.rstrip("/").rsplit("/", 1)[-1]).stem or "model"
        output = f"{stem}.defended.safetensors"
    if trigger_mask and not trigger_image:
        raise BdtoolError("--trigger-mask needs --trigger-image")
    from bdtool.core.tracking.registry import parse_registration

    registration = parse_registration(register, "--register") if register else None
    preflight(tracking_uri, str(Path(output).expanduser().resolve().parent))
    from bdtool.cli.main import report_orphans
    from bdtool.core.experiment.defend import DefendConfig, defend_model

    attack = None
    if trigger_image:
        for path, what in ((trigger_image, "--trigger-image"), (trigger_mask, "--trigger-mask")):
            if path is not None and ("," in path or "=" in path):
                raise BdtoolError(f"{what} {path}: a path with ',' or '=' cannot be passed on; rename the file")
        attack = f"image:trigger={trigger_image}" + (f",mask={trigger_mask}" if trigger_mask else "")
    env = make_env(device, None, False, tracking_uri, experiment, quiet=json_)
    from bdtool.core.experiment.model_source import parse_model_args

    config = DefendConfig(weights=model_file, model=architecture, model_args=parse_model_args(model_arg),
                          normalize=normalize, dataset=f"folder:{data}", output=output, row=row,
                          target=target_label, attack=attack, samples=samples, seed=seed,
                          log_model=not no_log_models, register=registration, dry_run=dry_run)
    if dry_run:
        plan = defend_model(config, env)
        say_plan(plan.to_dict(), f"{plan.row} (knowledge {plan.knowledge}) on {plan.n_unlearn} clean images of "
                 f"{model_file} (sha256 {plan.weights_sha256[:12]}), {plan.n_holdout} held out, {plan.classes} "
                 f"classes; would write {plan.output}", json_)
        return
    report_orphans(tracking_uri)
    result = defend_model(config, env)
    if json_:
        emit_json(result.to_dict())
        return
    b, a = result.before, result.after
    click.echo(f"defended {model_file} (sha256 {result.weights_sha256[:12]}) with {result.row}, knowledge "
               f"{result.knowledge}, on {result.n_unlearn} clean images in {result.defense_time_s:.2f} s")
    click.echo(f"  held-out part ({result.n_holdout} images): ACC {_pct(b.acc)} -> {_pct(a.acc)}, min-class "
               f"{_pct(b.min_class_acc)} -> {_pct(a.min_class_acc)}"
               + (f", target-class {_pct(b.ctca)} -> {_pct(a.ctca)}" if a.ctca == a.ctca else "")
               + (f", ASR with your trigger {_pct(b.asr)} -> {_pct(a.asr)}" if a.asr == a.asr else ""))
    click.echo(f"defended model written to {result.output}")
    if result.registered:
        click.echo(f"registered as {result.registered}")
    click.echo(f"MLflow run {result.run_id} (bdtool ui to browse)")
