"""Shell completion of plugin names and run ids (README, "Shell completion").

Enable it once per shell, e.g. for bash ``eval "$(_BDTOOL_COMPLETE=bash_source bdtool)"`` (zsh:
``zsh_source``, fish: ``fish_source``); click calls the functions below while the user presses
Tab. Each one fails quietly: a broken plugin or an unreachable store completes nothing rather than
printing into the user's prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from click.shell_completion import CompletionItem


def plugin_names(kind: str, with_params: bool = False) -> Callable[..., list[CompletionItem]]:
    """Completes the names registered in ``kind`` (defenses, attacks, datasets, models, metrics,
    sweeps), with their descriptions; ``with_params`` keeps completing after ``NAME:``."""

    def complete(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
        try:
            from bdtool.plugins import get_registries

            entries = list(get_registries().registry(kind))
        except Exception:  # noqa: BLE001 - completion must never print into the prompt
            return []
        name, sep, _ = incomplete.partition(":")
        if sep and with_params:
            entry = next((e for e in entries if e.name == name), None)
            params = getattr(getattr(entry, "obj", None), "Params", None) if entry else None
            if params is None:
                return []
            import dataclasses

            return [CompletionItem(f"{name}:{f.name}=") for f in dataclasses.fields(params)
                    if f"{name}:{f.name}".startswith(incomplete)]
        return [CompletionItem(e.name, help=getattr(e.obj, "description", "") or None)
                for e in entries if e.name.startswith(incomplete)]

    return complete


def comparison_run_ids(ctx: Any, param: Any, incomplete: str) -> list[CompletionItem]:
    """``latest`` and the ids of the store's newest comparisons (``bdtool show``)."""
    items = [CompletionItem("latest")] if "latest".startswith(incomplete) else []
    try:
        from mlflow.tracking import MlflowClient

        from bdtool.core import tracking
        from bdtool.core.tracking.locations import resolve_tracking_uri

        uri = resolve_tracking_uri(ctx.params.get("tracking_uri"))
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            return items  # no store yet: do not create one while completing
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.`{tracking.KIND_TAG}` = 'comparison'",
                                  order_by=["attributes.start_time DESC"], max_results=50)
    except Exception:  # noqa: BLE001 - completion must never print into the prompt
        return items
    return items + [CompletionItem(r.info.run_id, help=r.info.run_name) for r in runs
                    if r.info.run_id.startswith(incomplete)]
