"""Option sets shared by several commands (one definition per option, so commands agree)."""

from __future__ import annotations

from typing import Any, Callable

import click

from bdtool.cli.completion import plugin_names
from bdtool.core.compute.device import DEVICE_CHOICES
from bdtool.core.params import INT_LIMIT

F = Callable[..., Any]


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


SEED = click.IntRange(min=0, max=INT_LIMIT)
"""A seed torch, numpy and Python's random all take (torch's generator overflows past 2⁶³, numpy's
legacy seeding past 2³²): one declaration for every seed option."""

COUNT = click.IntRange(min=1, max=INT_LIMIT)
"""A number of things (samples, epochs): at least 1."""

MAX_SEEDS = 1000
SEEDS = click.IntRange(min=1, max=MAX_SEEDS)
"""Seeds per (row, n): each is a full run; a thousand is already a week of ResNet-18 runs."""

CLASS = click.IntRange(min=0, max=INT_LIMIT)
"""A class index; its upper bound is the data set's, checked once the data set is known."""


class TargetType(click.ParamType):
    """``--target``: a class index (as ``CLASS``) or ``all-to-all`` (every class y to (y + 1) mod K,
    ``ALL_TO_ALL``; docs/attacks.md, "All-to-all")."""

    name = "CLASS|all-to-all"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from bdtool.core.interfaces import ALL_TO_ALL

        if isinstance(value, int) and not isinstance(value, bool):
            return CLASS.convert(value, param, ctx) if value != ALL_TO_ALL else value
        if str(value).strip().lower() in ("all-to-all", "all2all", "all"):
            return ALL_TO_ALL
        try:
            return CLASS.convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"{value!r} is neither a class index (0 or more) nor all-to-all", param, ctx)


TARGET = TargetType()


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that refuses NaN and inf (click's own lets NaN through every bound)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if number != number or number in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


POISON_RATE = FiniteFloatRange(min=0.0, max=1.0, max_open=True)
TASK_SHARE = FiniteFloatRange(min=0.0, max=1024.0, min_open=True)
"""GPUs or CPUs a Ray task asks for."""

dry_run_option = click.option(
    "--dry-run", is_flag=True,
    help="Check every input (options, rows and their parameters, the data set, the store) and print what would "
         "run; train nothing, log nothing.")


class ExperimentName(click.ParamType):
    """An MLflow experiment name as MLflow accepts it: not empty, at most 500 characters, printable."""

    name = "experiment"
    MAX_LENGTH = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        text = str(value)
        if not text.strip():
            self.fail("an experiment name cannot be empty", param, ctx)
        if len(text) > self.MAX_LENGTH:
            self.fail(f"an experiment name has at most {self.MAX_LENGTH} characters, got {len(text)}", param, ctx)
        if not text.isprintable():
            self.fail("an experiment name cannot hold control characters", param, ctx)
        return text


EXPERIMENT_ENV = ["BDTOOL_EXPERIMENT", "MLFLOW_EXPERIMENT_NAME"]
"""Where ``--experiment`` is read from when not given, first match wins."""

tracking_uri_option = click.option(
    "--tracking-uri", default=None, envvar=["BDTOOL_TRACKING_URI", "MLFLOW_TRACKING_URI"], show_envvar=True,
    help="MLflow store (default sqlite:///mlruns/mlflow.db).")
experiment_option = click.option(
    "--experiment", default="bdtool", show_default=True, type=ExperimentName(), envvar=EXPERIMENT_ENV,
    show_envvar=True, help="MLflow experiment name.")


victim_options = _stack(
    click.option("--dataset", default="digits", show_default=True, shell_complete=plugin_names("datasets"),
                 help="Dataset name (bdtool list datasets)."),
    click.option("--model", default="small-cnn", show_default=True, shell_complete=plugin_names("models"),
                 help="Model architecture: a name (bdtool list models) or MODULE:CALLABLE, any importable callable "
                      "that returns a torch.nn.Module (torchvision.models:resnet18, mynets:Net, nets.py:Net; "
                      "docs/own-models.md)."),
    click.option("model_arg", "--model-arg", multiple=True, metavar="KEY=VALUE",
                 help="An argument of a MODULE:CALLABLE model, a Python literal or text (repeatable: "
                      "--model-arg num_classes=10 --model-arg in_channels=1)."),
    click.option("--normalize", default=None, metavar="MEAN,STD|PRESET",
                 help="The model was trained behind Normalize(mean, std): MEAN,STD, per channel "
                      "M1,M2,M3,S1,S2,S3, or imagenet, cifar10, mnist, fashion-mnist; images and triggers stay in "
                      "[0, 1]."),
    click.option("--attack", default="badnets", show_default=True, shell_complete=plugin_names("attacks", True),
                 help="Attack name, optionally NAME:k=v,..."),
    click.option("--target", default=0, show_default=True, type=TARGET,
                 help="Backdoor target class, or all-to-all (class y to y+1 mod K; dirty-label attacks only)."),
    click.option("--poison-rate", default=0.05, show_default=True, type=POISON_RATE, help="Share poisoned: of the training set (dirty-label attacks) or of the target class (clean-label sig, lc; docs/attacks.md)."),
    click.option("--victim-seed", default=0, show_default=True, type=SEED, help="Seed of the victim's poisoning and training."),
    click.option("--epochs", type=COUNT, default=None, help="Victim training epochs (default: the dataset's recipe)."),
)

victim_source_option = click.option(
    "--victim", default=None, metavar="SOURCE",
    help="Your own model instead of a victim bdtool trains: a .safetensors file, a PyTorch state dict "
         "(loaded with weights_only=True, never unpickled), runs:/RUN_ID/PATH, models:/NAME/VERSION or models:/NAME@ALIAS. "
         "--model is its architecture; --dataset, --attack and --target say how it is evaluated "
         "(docs/own-models.md).")

env_options = _stack(
    click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
                 envvar="BDTOOL_DEVICE", show_envvar=True, help="auto = CUDA when available."),
    click.option("--data-dir", type=click.Path(file_okay=False), default=None, envvar="BDTOOL_DATA_DIR",
                 show_envvar=True,
                 help="Where datasets live (default ~/.cache/bdtool/data; Fashion-MNIST also from Debian)."),
    click.option("--download", is_flag=True, envvar="BDTOOL_DOWNLOAD", show_envvar=True,
                 help="Allow torchvision to download a missing dataset."),
    tracking_uri_option,
    experiment_option,
    click.option("json_", "--json", is_flag=True, help="Print machine-readable JSON on stdout and nothing else."),
)

executor_options = _stack(
    click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 envvar="BDTOOL_EXECUTOR", show_envvar=True,
                 help="local: every run here, one after another; ray: each (row, n, seed) as a Ray task "
                      "(docs/scale-out.md; pip install 'bdtool[ray]')."),
    click.option("--ray-address", default=None, metavar="auto|ray://HOST:PORT", envvar="BDTOOL_RAY_ADDRESS",
                 show_envvar=True,
                 help="The Ray cluster to join (default: start a local instance with this machine's cores)."),
    click.option("--gpus-per-task", default=1.0, show_default=True, type=TASK_SHARE,
                 help="GPUs a Ray task asks for on CUDA; fractions pack several tasks onto one GPU."),
    click.option("--cpus-per-task", default=1.0, show_default=True, type=TASK_SHARE,
                 help="CPU cores a Ray task asks for (torch uses that many threads in it)."),
)


def comparison_options(samples_help: str, output_help: str) -> Callable[[F], F]:
    """The options ``bdtool compare`` and ``bdtool sweep`` share, declared once: ``--samples``,
    ``--seeds``, ``--output`` and ``--no-log-models`` (each command says in its own words what its
    ``--samples`` and ``--output`` mean)."""
    return _stack(
        click.option("samples", "--samples", multiple=True, type=COUNT, help=samples_help),
        click.option("--seeds", default=3, show_default=True, type=SEEDS,
                     help="Seeds per (row, n): draws of D_U and of the defense; results are mean ± std."),
        click.option("--output", type=click.Path(file_okay=False), default=None, help=output_help),
        click.option("--no-log-models", is_flag=True, help="Do not log each defended model to MLflow (faster)."),
    )
