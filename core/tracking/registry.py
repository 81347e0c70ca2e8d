"""Defended models as MLflow registered model versions (``bdtool defend --register``, ``bdtool
compare --register-best``; docs/ui.md, "Registered models").

A version points at weights only, never at a pickle: ``runs:/RUN/defended`` (the
``.safetensors`` ``bdtool defend`` writes) or ``runs:/RUN/model`` (the ``state_dict.pt`` of a
comparison's run, its digest checked on load). It carries the tags a reviewer filters on (defense,
row, knowledge, n, seed, the victim's digest, its metrics) and an alias, so that
``--victim models:/NAME@ALIAS`` loads it back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from bdtool.core.errors import BdtoolError

DEFAULT_ALIAS = "defended"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,255}$")
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,254}$")


@dataclass(frozen=True)
class Registration:
    name: str
    alias: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def parse_registration(text: str, option: str, default_alias: str = DEFAULT_ALIAS) -> Registration:
    """``NAME`` or ``NAME@ALIAS`` as MLflow accepts them, else one ``BdtoolError`` line."""
    name, sep, alias = text.partition("@")
    alias = alias if sep else default_alias
    if not _NAME.match(name):
        raise BdtoolError(f"{option} {text}: a registered model's name is 1-256 letters, digits, '_', '-', '.' or "
                          "spaces, starting with a letter or digit")
    if not _ALIAS.match(alias) or alias.lower() == "latest" or re.fullmatch(r"v\d+", alias, re.IGNORECASE):
        raise BdtoolError(f"{option} {text}: the alias '{alias}' is not one MLflow accepts (letters, digits, '_' or "
                          "'-', starting with a letter or '_'; not 'latest' nor 'v<number>')")
    return Registration(name, alias)


def register_version(registration: Registration, source: str, run_id: str, tags: Mapping[str, Any]) -> str:
    """Register ``source`` (a ``runs:/`` URI of weights) as a new version of ``registration.name``,
    tag it, point the alias at it; returns the version number."""
    import mlflow  # heavy: imported on use (core/tracking/store.py)

    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(registration.name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(registration.name, description="Defended models written by bdtool")
    version = client.create_model_version(registration.name, source, run_id=run_id,
                                          tags={k: str(v)[:5000] for k, v in tags.items() if v is not None})
    client.set_registered_model_alias(registration.name, registration.alias, version.version)
    return str(version.version)


def best_run(payload: Mapping[str, Any], metric: str = "class_score") -> dict[str, Any]:
    """The run to register from a comparison's summary (``Summary.to_dict``): the (row, n) with the
    highest mean ``metric``, then its seed with the highest ``metric`` (the lowest seed on a tie).
    The null row (``suppress-target``, which deletes the class) competes like any other; its
    ClassScore is 0. ``BdtoolError`` when no row has the metric, or none has it above 0."""
    rows = [r for r in payload.get("rows", []) if r.get(f"{metric}_mean") is not None]
    if not rows:
        raise BdtoolError(f"no row of this comparison has a {metric} (a clean victim has none, or every row "
                          "failed): nothing to register")
    best = max(rows, key=lambda r: r[f"{metric}_mean"])
    if not best[f"{metric}_mean"] > 0:
        raise BdtoolError(f"no row has a {metric} above 0 (none removed the backdoor and kept the class): "
                          "nothing worth registering")
    runs = [r for r in payload.get("runs", []) if r["label"] == best["label"] and r["n"] == best["n"]
            and r.get("run_id") and (r.get("metrics") or {}).get(metric) is not None]
    if not runs:
        raise BdtoolError(f"the best row {best['label']} n={best['n']} has no logged run to register")
    return max(runs, key=lambda r: (r["metrics"][metric], -r["seed"]))
