"""Victim quality per attack (docs/attacks.md, "Victims"): ACC of the clean model (poison rate 0,
the same dataset, model, recipe and seed) against each attack's victim, ASR, the victim's training
and poisoning wall time, over victim seeds.

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attack_victims.py --tracking-uri sqlite:////tmp/me/mlflow.db
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attack_victims.py --dataset fashion-mnist --seeds 1 --only sig
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/attack_victims.py --set adaptive --tracking-uri sqlite:////tmp/me/mlflow.db

Victims come from (or are trained into) the MLflow store given; a reused victim's training time is
the one logged when it was trained (metric ``train_time_s``); poisoning time is measured in this
process (LC's PGD runs again on reuse). Results: Markdown + JSON in
benchmarks/results/attack_victims_<dataset>.{md,json} (``--set adaptive``: adaptive_victims_<dataset>).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch

# Each attack: the paper's defaults at the default poison rate, and the documented recipe(s)
# (docs/attacks.md). ``rate`` is a share of the training set (dirty-label) or of the target
# class (clean-label SIG and LC), the attack's ``poison_rate_of``.
CONFIGS: list[tuple[str, str, tuple[tuple[str, str], ...], float]] = [
    ("badnets", "default", (), 0.05),
    ("sig", "paper defaults", (), 0.05),
    ("sig", "all of the target class", (), 1.0),
    ("sig", "all of the target class, delta 0.3, delta_test 0.5", (("delta", "0.3"), ("delta_test", "0.5")), 1.0),
    ("wanet", "paper defaults", (), 0.05),
    ("wanet", "paper's rate", (), 0.1),
    ("wanet", "recipe: s = 1", (("s", "1.0"),), 0.1),
    ("lc", "paper defaults", (), 0.05),
    ("lc", "half of the target class", (), 0.5),
    ("lc", "recipe: 3 px corners, eps 0.1255", (("size", "3"), ("eps", "0.1255")), 0.5),
    ("lc", "the same, eps 32/255 exactly", (("size", "3"), ("eps", str(32 / 255))), 0.5),
]

# The adaptive attacks (``--set adaptive``; docs/attacks.md, "Adaptive attacks"): paper defaults
# at bdtool's default rate, and the recipes that meet the bar on digits.
ADAPTIVE: list[tuple[str, str, tuple[tuple[str, str], ...], float]] = [
    ("adap-blend", "paper defaults", (), 0.05),
    ("adap-patch", "paper defaults", (), 0.05),
    ("adap-patch", "paper defaults, rate 0.1", (), 0.1),
    ("adap-patch", "recipe: 3 px patches", (("size", "3"),), 0.05),
    ("proj-aware", "defaults", (), 0.05),
    ("proj-aware", "defaults, rate 0.1", (), 0.1),
    ("proj-aware", "recipe: 3 px squares, rate 0.1", (("size", "3"),), 0.1),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", action="append", help="attack names to run (repeatable); default all")
    parser.add_argument("--set", choices=("field", "adaptive"), default="field",
                        help="the field's attacks (default) or the adaptive ones (adaptive_victims_<dataset>)")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient

    from bdtool.core.experiment.progress import ProgressPrinter
    from bdtool.core.experiment.components import load_dataset
    from bdtool.core.experiment.env import RunEnv
    from bdtool.core.experiment.victim import get_victim
    from bdtool.core.experiment.victim_spec import VictimSpec
    from bdtool.plugins import get_registries

    env = RunEnv(registries=get_registries(), device=torch.device("cpu"), tracking_uri=args.tracking_uri,
                 experiment="attack-victims", progress=ProgressPrinter(enabled=True))
    bundle = load_dataset(args.dataset, env)
    client = MlflowClient(tracking_uri=args.tracking_uri)

    def train_time(victim) -> float:
        return victim.train_seconds if not victim.reused else \
            client.get_run(victim.run_id).data.metrics.get("train_time_s", float("nan"))

    rows = []
    for seed in range(args.seeds):
        clean = get_victim(VictimSpec(dataset=args.dataset, poison_rate=0.0, seed=seed), env, bundle=bundle)
        for attack, what, options, rate in (ADAPTIVE if args.set == "adaptive" else CONFIGS):
            if args.only and attack not in args.only:
                continue
            spec = VictimSpec(dataset=args.dataset, attack=attack, attack_options=options, poison_rate=rate, seed=seed)
            v = get_victim(spec, env, bundle=bundle)
            rows.append({
                "attack": attack, "what": what, "options": ",".join(f"{k}={val}" for k, val in options),
                "poison_rate": rate, "poison_rate_of": v.attack.poison_rate_of, "seed": seed,
                "n_poisoned": len(v.data.poisoned_indices), "n_noise": len(v.data.noise_indices),
                "clean_acc": clean.before.acc, "clean_asr": clean.before.asr if attack == "badnets" else None,
                "acc": v.before.acc, "asr": v.before.asr, "ctca": v.before.ctca,
                "train_s": train_time(v), "clean_train_s": train_time(clean), "poison_s": v.poison_seconds,
                "victim_run": v.run_id, "clean_run": clean.run_id,
            })
            r = rows[-1]
            print(f"{attack:8s} {what:52s} seed {seed}: clean ACC {r['clean_acc']:.4f}  ACC {r['acc']:.4f}  "
                  f"ASR {r['asr']:.4f}  train {r['train_s']:.1f}s  poison {r['poison_s']:.2f}s", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{'adaptive' if args.set == 'adaptive' else 'attack'}_victims_{args.dataset}"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    lines = ["| attack | config | options | poison rate (of) | seed | n poisoned (+ noise) | clean ACC | victim ACC | ASR | bar met | train s | poison s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ok = r["asr"] >= 0.9 and r["acc"] >= r["clean_acc"] - 0.03
        noise = f" (+{r['n_noise']})" if r["n_noise"] else ""
        lines.append(f"| `{r['attack']}` | {r['what']} | `{r['options'] or '-'}` | {r['poison_rate']:g} ({r['poison_rate_of']}) "
                     f"| {r['seed']} | {r['n_poisoned']}{noise} | {100 * r['clean_acc']:.2f} | {100 * r['acc']:.2f} "
                     f"| {100 * r['asr']:.2f} | {'yes' if ok else 'no'} | {r['train_s']:.1f} | {r['poison_s']:.2f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    main()
