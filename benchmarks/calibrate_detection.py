"""Where the trigger-free detection's thresholds come from (docs/method.md, "Unknown backdoor"): the
gap of every search family on clean victims only, their D_U only, victims of their own seeds (10
onward: none of them is a victim the trigger-free benchmark evaluates).

Run from the repository root (victims come from the store, trained on first use):

    .venv/bin/python benchmarks/calibrate_detection.py
    .venv/bin/python benchmarks/calibrate_detection.py --datasets digits,fashion-mnist --victim-seeds 10

The rule, fixed before any backdoored victim was looked at: a family's threshold is the largest gap
it shows on a clean victim plus one step of its radius' growth (the gap is measured in those steps,
so a clean victim would need a gap a whole step larger than any seen to be flagged). The result,
docs/results/detection_calibration.{md,json}, lists every gap and the thresholds the rule gives;
the defaults of ``UniversalSearchParams`` are those thresholds, rounded up to two decimals.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from bdtool.core.experiment.context import defense_context  # noqa: E402
from bdtool.core.experiment.victim import RunEnv, VictimSpec, get_victim  # noqa: E402
from bdtool.defenses.activation_subspace import SubspaceEditing  # noqa: E402
from bdtool.defenses.universal_search import FAMILIES, UniversalSearchParams, search_family  # noqa: E402
from bdtool.plugins import get_registries  # noqa: E402

CPU = torch.device("cpu")
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits")
    parser.add_argument("--victim-seeds", default="10,11,12,13,14,15")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    args = parser.parse_args()
    env = RunEnv(registries=get_registries(), device=CPU, tracking_uri=args.tracking_uri, experiment="trigger-free")
    params = UniversalSearchParams()
    records: list[dict[str, Any]] = []
    for dataset in args.datasets.split(","):
        for seed in [int(s) for s in args.victim_seeds.split(",")]:
            victim = get_victim(VictimSpec(dataset=dataset, attack="badnets", target=0, poison_rate=0.0, seed=seed), env)
            for draw in range(args.draws):
                ctx = defense_context(victim, SubspaceEditing, args.samples, draw, CPU, trigger=False, target=False)
                record: dict[str, Any] = {"dataset": dataset, "victim_seed": seed, "draw": draw}
                for family in FAMILIES:
                    started = time.perf_counter()
                    result = search_family(victim.model, ctx.unlearn.x, ctx.unlearn.y, ctx.num_classes, family,
                                           params, CPU, ctx.seed)
                    record[family] = {"gap": result.gap(), "class": result.smallest(),
                                      "seconds": time.perf_counter() - started}
                records.append(record)
                print(dataset, seed, draw, {f: round(record[f]["gap"], 3) for f in FAMILIES}, flush=True)
    steps = {"additive": math.log(params.growth), "warp": math.log(params.growth), "patch": math.log(params.patch_growth)}
    thresholds = {f: max(r[f]["gap"] for r in records) + steps[f] for f in FAMILIES}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / "detection_calibration"
    stem.with_suffix(".json").write_text(json.dumps({"records": records, "thresholds": thresholds}, indent=1))
    lines = ["# Detection thresholds from clean victims", "",
             f"Command: `.venv/bin/python benchmarks/calibrate_detection.py --datasets {args.datasets} "
             f"--victim-seeds {args.victim_seeds} --draws {args.draws}`", "",
             "Gap = ln(second smallest radius / smallest) of each family's search on a clean victim's D_U "
             f"(n = {args.samples}). Threshold = the largest clean gap + one growth step "
             "(benchmarks/calibrate_detection.py says why).", "",
             "| data set | victim seed | draw | " + " | ".join(FAMILIES) + " |",
             "|---|---:|---:|" + "---:|" * len(FAMILIES)]
    for r in records:
        lines.append(f"| {r['dataset']} | {r['victim_seed']} | {r['draw']} | " +
                     " | ".join(f"{r[f]['gap']:.3f}" for f in FAMILIES) + " |")
    lines += ["", "| family | largest clean gap | one step | threshold (rule) | default |", "|---|---:|---:|---:|---:|"]
    for f in FAMILIES:
        lines.append(f"| {f} | {max(r[f]['gap'] for r in records):.3f} | {steps[f]:.3f} | {thresholds[f]:.3f} | "
                     f"{params.threshold(f):.2f} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
