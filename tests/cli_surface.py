"""The whole CLI surface as fuzz slots, and the property every invocation must hold.

Shared by tests/test_cli_fuzz.py (bounded examples, in CI) and benchmarks/fuzz_cli.py (a deeper run
whose counts go to docs/reliability.md, "The fuzzed CLI surface").

A *slot* is one place a user types a value: an option or argument of a command (found by walking
the click group, so a new option is fuzzed without a line here), or one field of a registered
plugin's ``Params`` written as ``k=v`` (``--defense NAME:k=v``, ``--attack NAME:k=v``,
``--dataset folder:PATH:k=v``, ``repair=NAME:LR``). Each invocation sets one slot to a generated
value and leaves the rest at their defaults; a command that can run for minutes is given
``--dry-run``, which makes every check a real run makes before it starts work.

The property (``check``): exit 0, or a non-zero exit whose stderr holds exactly one ``Error:`` line,
as its last line, with no control character in it; never a traceback or an exception escaping
click; and no MLflow run anywhere in the store (a dry run logs nothing, a refused command starts
nothing, so none can be left RUNNING).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np
from click.testing import CliRunner, Result
from hypothesis import strategies as st

from bdtool.cli import main
from bdtool.plugins import get_registries

HOSTILE = [
    "", " ", "0", "-0", "1", "-1", "2", "0.5", "-0.5", "1e-300", "1e308", "-1e308", "1e309", "nan", "NaN", "inf",
    "-inf", "Infinity", "2147483647", "2147483648", "-2147483649", "99999999999999999999999", "0x10", "1_000",
    "true", "none", "auto", "ü", "名前", "🙂", "\x00", "\x07", "\x1b[31mred", "\r", "a\nb", "\t", "a" * 5000,
    "/", ".", "..", "~", "/dev/null", "/dev/zero", "/proc/self/mem", "/nonexistent/dir/x", "/etc/passwd",
    "%s%n", "{}", "'", '"', ",", "=", ":", "+", "k=v", "a,b=c", "=x", "runs:/", "models:/x/1", "sqlite:///",
    "file:///dev/null", "-", "--", "--help", "-h",
]
"""Values every slot is tried with: numbers at and past every bound, NaN and inf, empty, unicode,
control characters, very long, and paths to odd places."""

COMMAND_TIMEOUT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}


def values(extra: list[str] = ()) -> st.SearchStrategy[str]:
    """Hostile values, generated numbers and text, and the slot's own valid choices (``extra``)."""
    parts = [st.sampled_from(HOSTILE), st.integers(-2**70, 2**70).map(str),
             st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=30)]
    if extra:
        parts.append(st.sampled_from(list(extra)))
    return st.one_of(*parts)


@dataclass(frozen=True)
class Slot:
    """One place a value goes: ``build(value, fixtures)`` gives the whole argv."""

    name: str
    build: Callable[[str, "Fixtures"], list[str]]
    choices: tuple[str, ...] = ()


@dataclass
class Fixtures:
    """Files the slots need: a scratch folder, its store, a model file and an image folder."""

    root: Path
    store: str = ""
    model_file: Path = Path()
    folder: Path = Path()
    extra: dict[str, Any] = field(default_factory=dict)


def make_fixtures(root: Path) -> Fixtures:
    """An untrained digits small-cnn as safetensors (``defend`` checks weights against the
    architecture, not their quality) and a digits image folder of 6 images per class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from bdtool.core.data import DataBundle
    from bdtool.core.experiment.components import build_model
    from bdtool.core.tracking.serialization import save_safetensors
    from bdtool.core.tensors import LabeledTensors

    import torch

    root.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, 1, 8, 8)
    bundle = DataBundle("digits", LabeledTensors(x, torch.zeros(2, dtype=torch.long)),
                        LabeledTensors(x, torch.zeros(2, dtype=torch.long)), 10)
    model_file = root / "model.safetensors"
    save_safetensors(build_model(get_registries(), "small-cnn", bundle), model_file)
    digits = load_digits()
    folder = root / "images"
    for cls in range(10):
        (folder / str(cls)).mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(digits.target == cls)[:6]):
            Image.fromarray((digits.images[index] * 255 / 16).astype(np.uint8)).save(folder / str(cls) / f"{i}.png")
    return Fixtures(root=root, store=f"sqlite:///{root / 'store' / 'mlflow.db'}", model_file=model_file,
                    folder=folder)


def _base(command: click.Command, fx: Fixtures, skip: str | None = None) -> list[str]:
    """The arguments every invocation of ``command`` gets: its dry run, the scratch store, and
    ``defend``'s model file and folder (unless ``skip`` is that very slot)."""
    names = {p.name for p in command.params}
    args: list[str] = []
    if command.name == "defend":
        args += [str(fx.model_file)] if skip != "model_file" else []
        args += ["--data", str(fx.folder)] if skip != "data" else []
        args += ["--output", str(fx.root / "out" / "defended.safetensors")] if skip != "output" else []
    if "dry_run" in names:
        args.append("--dry-run")
    if "tracking_uri" in names and skip != "tracking_uri":
        args += ["--tracking-uri", fx.store]
    if "directory" in names and skip != "directory":
        args += ["--dir", str(fx.root / "scaffold")]
    return args


def _choices(param: click.Parameter) -> tuple[str, ...]:
    if isinstance(param.type, click.Choice):
        return tuple(map(str, param.type.choices))
    regs = get_registries()
    names = {"dataset": regs.datasets, "model": regs.models, "architecture": regs.models, "attack": regs.attacks,
             "defenses": regs.defenses, "row": regs.defenses, "metrics": regs.metrics, "preset": regs.sweeps}
    registry = names.get(param.name or "")
    return tuple(e.name for e in registry) if registry is not None else ()


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command under ``group`` with the words that call it (``plugin new``)."""
    ctx = click.Context(group)
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


def command_slots() -> list[Slot]:
    """Every option that takes a value and every argument of every command (flags have no value
    to fuzz; ``--help`` and ``--version`` are click's)."""
    slots: list[Slot] = []
    for words, command in _commands(main):
        label = " ".join(words)
        for param in command.params:
            if isinstance(param, click.Option) and (param.is_flag or param.name in ("help",)):
                continue
            if isinstance(param, click.Argument):
                def build(value: str, fx: Fixtures, command=command, param=param, words=words) -> list[str]:
                    base = _base(command, fx, skip=param.name)
                    return [*words, *base, "--", value] if value.startswith("-") else [*words, value, *base]
            else:
                flag = max(param.opts, key=len)

                def build(value: str, fx: Fixtures, command=command, param=param, flag=flag, words=words) -> list[str]:
                    return [*words, *_base(command, fx, skip=param.name), f"{flag}={value}"]
            shown = param.human_readable_name if isinstance(param, click.Argument) else max(param.opts, key=len)
            slots.append(Slot(f"{label} {shown}", build, _choices(param)))
    return slots


def _numeric(annotation: Any) -> bool:
    args = typing.get_args(annotation)
    return annotation in (int, float) or any(_numeric(a) for a in args)


def param_slots() -> list[Slot]:
    """Every field of every registered defense's, attack's and data set's ``Params`` as ``k=v``
    (third-party plugins' included: they come from the same entry points), and the repair's rate."""
    regs = get_registries()
    slots: list[Slot] = []
    for entry in regs.defenses:
        for f in dataclasses.fields(entry.obj.Params):
            slots.append(Slot(f"--defense {entry.name}:{f.name}", lambda v, fx, d=entry.name, k=f.name: [
                "compare", "--dry-run", "--tracking-uri", fx.store, "--defense", f"{d}:{k}={v}"]))
    for entry in regs.attacks:
        for f in dataclasses.fields(entry.obj.Params):
            slots.append(Slot(f"--attack {entry.name}:{f.name}", lambda v, fx, a=entry.name, k=f.name: [
                "compare", "--dry-run", "--tracking-uri", fx.store, "--defense", "ours", "--attack", f"{a}:{k}={v}"]))
    for entry in regs.repairs:
        slots.append(Slot(f"--defense ours:repair={entry.name}:LR", lambda v, fx, r=entry.name: [
            "compare", "--dry-run", "--tracking-uri", fx.store, "--defense", f"ours:repair={r}:{v}"]))
    from bdtool.plugins.builtin.image_folder import FolderOptions

    for f in dataclasses.fields(FolderOptions):
        slots.append(Slot(f"--dataset folder:PATH:{f.name}", lambda v, fx, k=f.name: [
            "train", "--dry-run", "--tracking-uri", fx.store, "--dataset", f"folder:{fx.folder}:{k}={v}"]))
    return slots


def all_slots() -> list[Slot]:
    return command_slots() + param_slots()


@dataclass
class Verdict:
    ok: bool
    exit_code: int | None
    why: str = ""
    stderr_tail: str = ""


def runs_in_store(store: str) -> int:
    """MLflow runs in the scratch store (0 when it was never created)."""
    path = Path(store.removeprefix("sqlite:///"))
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return int(db.execute("select count(*) from runs").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def invoke(argv: list[str], fx: Fixtures) -> Result:
    runner = CliRunner()
    old = os.getcwd()
    work = fx.root / "cwd"
    work.mkdir(exist_ok=True)
    os.chdir(work)  # relative --output and --dir values land in the scratch folder
    try:
        return runner.invoke(main, argv, catch_exceptions=True, env={"MLFLOW_TRACKING_URI": None,
                                                                     **COMMAND_TIMEOUT_ENV})
    finally:
        os.chdir(old)


def check(argv: list[str], fx: Fixtures) -> Verdict:
    """Run ``argv`` and hold it to the property of the module docstring."""
    result = invoke(argv, fx)
    stderr = result.stderr
    tail = stderr.strip()[-600:]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return Verdict(False, result.exit_code, f"{type(result.exception).__name__}: {result.exception}"[:300], tail)
    if "Traceback" in result.output or "Traceback" in stderr:
        return Verdict(False, result.exit_code, "traceback printed", tail)
    if runs_in_store(fx.store):
        return Verdict(False, result.exit_code, "a run was created", tail)
    if result.exit_code == 0:
        return Verdict(True, 0)
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    if len(errors) != 1 or lines[-1] != errors[0]:
        return Verdict(False, result.exit_code, f"{len(errors)} 'Error:' lines, not one as the last line", tail)
    if any(not ch.isprintable() and ch != "\t" for ch in errors[0]):
        return Verdict(False, result.exit_code, "a control character in the error line", tail)
    return Verdict(True, result.exit_code)
