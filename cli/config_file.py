"""``--config FILE``: a whole comparison in TOML (README, "A comparison as a file").

The file's keys are the command's option names without the dashes (``defense``, ``samples``,
``poison-rate`` or ``poison_rate``, ...); a repeatable option takes a list. They become the
command's defaults (click's ``default_map``), so an option given on the command line still wins.
What a comparison *is* (its rows, sizes, seeds and victim; not where it runs or logs) is written
back as TOML by :func:`comparison_toml`, logged with the comparison run as ``config.toml`` and
printed by ``bdtool show RUN --config``: the same file gives the same comparison (and the same
comparison key, so ``--resume auto`` finds it).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import click

MAX_CONFIG_BYTES = 1 << 20


def _flag(param: click.Parameter) -> str:
    return max(param.opts, key=len).lstrip("-") if isinstance(param, click.Option) else str(param.name)


def load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager callback of ``--config``: the file's keys as the command's defaults."""
    if value is None:
        return None
    path = Path(value).expanduser()
    try:
        if not path.is_file():  # /dev/zero or a FIFO would be read forever
            raise click.BadParameter(f"{value} is not a regular file", ctx, param)
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise click.BadParameter(f"{value} is larger than {MAX_CONFIG_BYTES // 1024} KiB; a comparison's TOML is "
                                     "a few lines", ctx, param)
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value} ({exc.strerror or exc})", ctx, param) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{value} is not valid TOML ({str(exc).splitlines()[0]})", ctx, param) from None
    by_flag = {_flag(p): p for p in ctx.command.params if p.name not in ("config", "help")}
    defaults: dict[str, Any] = {}
    for key, raw in data.items():
        target = by_flag.get(key) or by_flag.get(key.replace("_", "-"))
        if target is None:
            known = ", ".join(sorted(by_flag))
            raise click.BadParameter(f"{value}: unknown key '{key}'; known: {known}", ctx, param)
        if isinstance(raw, dict):
            raise click.BadParameter(f"{value}: '{key}' is a table; give a value or a list", ctx, param)
        if isinstance(raw, list) and not target.multiple:
            raise click.BadParameter(f"{value}: '{key}' takes one value, not a list", ctx, param)
        defaults[str(target.name)] = raw if not target.multiple or isinstance(raw, list) else [raw]
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return str(path)


config_option = click.option(
    "--config", type=click.Path(dir_okay=False), default=None, is_eager=True, expose_value=True,
    callback=load_config, metavar="FILE.toml",
    help="Read the options from a TOML file (keys: the option names without '--'; lists for repeatable ones); "
         "options given here win. bdtool show RUN --config writes one back.")


def comparison_toml(rows: list[str], samples: list[int], seeds: int, knowledge: str, metrics: list[str],
                    spec: Any) -> str:
    """What a comparison is, as the TOML ``--config`` reads: its rows, sizes, seeds, threat model,
    columns and victim (not where it runs or logs). A value left at ``None`` is left out."""
    attack = spec.attack + (":" + ",".join(f"{k}={v}" for k, v in spec.attack_options) if spec.attack_options else "")
    values = {"defense": list(rows), "samples": list(samples), "seeds": seeds, "knowledge": knowledge,
              "metric": list(metrics), "victim": spec.source, "dataset": spec.dataset, "model": spec.model,
              "model-arg": [f"{k}={v}" for k, v in spec.model_args], "normalize": spec.normalize,
              "attack": attack, "target": spec.target, "poison-rate": spec.poison_rate, "victim-seed": spec.seed,
              "epochs": spec.epochs}
    lines = ["# a bdtool comparison: bdtool compare --config FILE"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()
              if value is not None and value != []]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    escaped = "".join({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, ch)
                      if ch.isprintable() or ch in "\n\t\r" else _escape(ch) for ch in text)
    return f'"{escaped}"'


def _escape(ch: str) -> str:
    return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"
