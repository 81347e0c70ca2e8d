"""Ablation of the class-preserving edit ``ours-proj`` (docs/method.md, "Class-preserving edit").

Run from the repository root (victims come from the store; trained on first use):

    .venv/bin/python benchmarks/ablation_class_preserving.py --dataset digits --attack badnets --attack blend
    .venv/bin/python benchmarks/ablation_class_preserving.py --dataset fashion-mnist --attack badnets --attack blend

Every configuration runs on the runner's own DefenseContext (trigger known, n samples, each seed)
and is evaluated on the evaluation half exactly as ``bdtool compare`` does. Results: Markdown +
JSON under benchmarks/results/ablation_class_preserving_<dataset>.{md,json}. A configuration the
defense refuses is recorded as an error, never as numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from bdtool.core.errors import BdtoolError  # noqa: E402
from bdtool.core.experiment.context import defense_context  # noqa: E402
from bdtool.core.experiment.evaluation import evaluate, score  # noqa: E402
from bdtool.core.experiment.env import RunEnv  # noqa: E402
from bdtool.core.experiment.victim import get_victim  # noqa: E402
from bdtool.core.experiment.victim_spec import VictimSpec  # noqa: E402
from bdtool.defenses.activation_subspace import SubspaceEditing  # noqa: E402
from bdtool.plugins import get_registries  # noqa: E402

CPU = torch.device("cpu")
RESULTS = Path(__file__).resolve().parent / "results"

GRID: list[dict[str, str]] = [
    # the defaults (whitened, shrinkage 0.05; rank chosen from D_U; s = 1) and the strength search
    {}, {"scale": "search"}, {"scale": "search", "tolerance": "0.05"},
    # the whitening: shrinkage γ (1 = none, the first release's orthogonal projection)
    {"shrinkage": "0.01"}, {"shrinkage": "0.2"}, {"shrinkage": "0.5"}, {"shrinkage": "1"},
    {"shrinkage": "1", "rank": "1"}, {"shrinkage": "1", "rank": "1", "scale": "search"}, {"shrinkage": "1", "rank": "4"},
    # the rank r: fixed instead of chosen
    {"rank": "1"}, {"rank": "2"}, {"rank": "4"}, {"rank": "8"}, {"rank": "0", "energy": "0.9"},
    {"restore_mean": "false"}, {"layer": "last"},
    # without the trigger: Neural Cleanse's reversed trigger (the target's; every class + MAD under none)
    {"knowledge": "target"}, {"knowledge": "target", "scale": "search"},
    {"knowledge": "target", "shrinkage": "1", "rank": "1"},
    {"knowledge": "none"}, {"knowledge": "none", "unflagged": "smallest"},
]
"""Every configuration differs from the defaults only in the options it names."""


def run(victim: Any, options: dict[str, str], n: int, seed: int) -> dict[str, float]:
    options = dict(options)
    knowledge = options.pop("knowledge", "trigger")
    ctx = defense_context(victim, SubspaceEditing, n, seed, CPU, trigger=knowledge == "trigger",
                          target=knowledge != "none")
    logged: dict[str, float] = {}
    ctx.log_metric = lambda key, value, step=None: logged.__setitem__(key, value)
    if options.get("layer") == "last":  # the classifier's input (the last Linear) instead of the head's
        options = {**options, "layer": [n for n, m in victim.model.named_modules() if isinstance(m, torch.nn.Linear)][-1]}
    defense = SubspaceEditing(SubspaceEditing.make_params(options))
    model = victim.fresh_copy()
    start = time.perf_counter()
    model = defense.defend(model, ctx)
    seconds = time.perf_counter() - start - logged.get("ours-proj.search_seconds", 0.0)
    with torch.no_grad():  # what the defender can see: the clean cross-entropy on D_U after the edit
        du_ce = float(torch.nn.functional.cross_entropy(model(ctx.unlearn.x), ctx.unlearn.y))
    result = evaluate(model, victim.data.evaluation, victim.attack, victim.bundle.num_classes, CPU)
    before = victim.before
    cls = score(result, before) * min(1.0, result.ctca / before.ctca) if before.ctca else float("nan")
    return {"asr": result.asr, "acc": result.acc, "ctca": result.ctca, "score": score(result, before),
            "class_score": cls, "rank": logged.get("ours-proj.rank", float("nan")),
            "scale": logged.get("ours-proj.scale", float("nan")), "du_ce": du_ce, "seconds": seconds,
            "search_seconds": logged.get("ours-proj.search_seconds", 0.0)}


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v == v]  # a run the defense left unchanged logs no rank (NaN)
    if not values:
        return "-"
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--attack", action="append", default=None)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    parser.add_argument("--knowledge", action="append", choices=["trigger", "target", "none"],
                        help="only the configurations of these threat models (default: all; on "
                             "Fashion-MNIST `none` searches a trigger for all 10 classes, ~8 min a run)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    env = RunEnv(registries=get_registries(), device=CPU, tracking_uri=args.tracking_uri, experiment="ablation")
    rows: list[dict[str, Any]] = []
    for attack in args.attack or ["badnets"]:
        victim = get_victim(VictimSpec(dataset=args.dataset, attack=attack), env)
        b = victim.before
        print(f"{args.dataset}/{attack}: victim ACC {b.acc:.4f} ASR {b.asr:.4f} CTCA {b.ctca:.4f}", flush=True)
        for options in GRID:
            if args.knowledge and options.get("knowledge", "trigger") not in args.knowledge:
                continue
            label = ",".join(f"{k}={v}" for k, v in options.items()) or "(defaults)"
            runs, error = [], None
            for seed in range(args.seeds):
                try:
                    runs.append(run(victim, options, args.samples, seed))
                except BdtoolError as exc:
                    error = str(exc)
                    break
            row: dict[str, Any] = {"attack": attack, "options": label, "n": args.samples, "runs": runs, "error": error}
            if runs and error is None:
                for key in ("score", "class_score", "asr", "acc", "ctca", "rank", "scale", "du_ce", "seconds",
                            "search_seconds"):
                    factor = 100.0 if key in ("asr", "acc", "ctca") else 1.0
                    row[key] = mean_std([r[key] * factor for r in runs])
            rows.append(row)
            print(f"  {label:40s} " + (error or "  ".join(f"{k} {row[k]}" for k in
                                                          ("score", "class_score", "asr", "acc", "ctca", "scale", "du_ce"))),
                  flush=True)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"ablation_class_preserving_{args.dataset}"
    stem.with_suffix(".json").write_text(json.dumps({"dataset": args.dataset, "samples": args.samples,
                                                     "seeds": args.seeds, "rows": rows}, indent=2))
    lines = [f"# ours-proj ablation: {args.dataset}, n = {args.samples}, {args.seeds} seeds", "",
             "Knowledge: the trigger, unless the options say knowledge=target|none (then Neural Cleanse's "
             "reversed trigger; its time is 'search s', apart from 'edit s').", "",
             "Command: `.venv/bin/python benchmarks/ablation_class_preserving.py --dataset "
             f"{args.dataset} " + " ".join(f"--attack {a}" for a in (args.attack or ['badnets']))
             + "".join(f" --knowledge {k}" for k in (args.knowledge or [])) + "`", "",
             "Defaults: rank=auto (max_rank 8), shrinkage=0.05, scale=auto (= 1); each row changes only the "
             "options it names.", "",
             "D_U CE: the clean cross-entropy on D_U after the edit (the one quality signal the defender has).", "",
             "| attack | options | Score | ClassScore | ASR % | ACC % | CTCA % | rank r | scale s | D_U CE | edit s | search s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row["error"]:
            lines.append(f"| {row['attack']} | {row['options']} | error: {row['error']} |||||||||| ")
        else:
            lines.append(f"| {row['attack']} | {row['options']} | " + " | ".join(
                row[k] for k in ("score", "class_score", "asr", "acc", "ctca", "rank", "scale", "du_ce", "seconds",
                                 "search_seconds")) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
