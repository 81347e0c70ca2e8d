"""Table 7-style comparison of the baselines (and `ours` when installed) on the Fashion-MNIST
victim: ASR, ACC, CTCA, Score and defense time, mean ± std over seeds, for n = 50 and 500.

    .venv/bin/python benchmarks/baselines_table.py                      # the documented run
    .venv/bin/python benchmarks/baselines_table.py --samples 50 --seeds 0 --defenses basicft,nad

The victim is trained once (~2 min on 2 CPU cores) and cached in the MLflow store given by
--tracking-uri. Retraining ignores D_U, so it runs once per seed and is reported with n = the
size of the clean training set. Writes benchmarks/results/baselines_table.{md,json} (the JSON
keeps every single run). Defenses are timed alone (no evaluation inside), on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch

from bdtool.core.compute.device import timed
from bdtool.core.experiment.context import defense_context
from bdtool.core.experiment.evaluation import evaluate, score
from bdtool.core.experiment.env import RunEnv
from bdtool.core.experiment.victim import get_victim
from bdtool.core.experiment.victim_spec import VictimSpec
from bdtool.plugins import get_registries

RESULTS = Path(__file__).resolve().parent / "results"
# (row label, defense name, with backdoor knowledge) in the supplement's Table 7 order.
ROWS = [
    ("actFT", "actft", True),
    ("BaEraser", "baeraser", True),
    ("Ours(BDK)", "ours", True),
    ("basicFT", "basicft", False),
    ("NAD", "nad", False),
    ("Ours(¬BDK)", "ours", False),
    ("Retraining", "retrain", False),
]


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def run_one(victim, label: str, name: str, bdk: bool, n: int, seed: int, device: torch.device) -> dict:
    cls = get_registries().defenses.get(name)
    data = victim.data
    # The one factory the runner uses: retraining gets the clean training set and an empty D_U.
    ctx = defense_context(victim, cls, n, seed, device, trigger=bdk, target=True)
    train = ctx.train
    defense = cls()
    torch.manual_seed(seed)
    with timed(device) as watch:
        model = defense.defend(victim.model, ctx)
    result = evaluate(model, data.evaluation, victim.attack, data.num_classes, device)
    return {
        "row": label, "defense": name, "bdk": bdk, "n": len(train) if train is not None else n, "seed": seed,
        "acc": result.acc, "asr": result.asr, "ctca": result.ctca, "min_class_acc": result.min_class_acc,
        "score": score(result, victim.before), "time_s": watch.seconds, "params": defense.params_dict(),
    }


def summarise(runs: list[dict]) -> list[dict]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["row"], r["n"]), []).append(r)
    order = [label for label, _, _ in ROWS]
    rows = []
    for (label, n), rs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), -kv[0][1])):
        rows.append({
            "row": label, "n": n, "seeds": [r["seed"] for r in rs],
            **{f"{k}_mean": mean_std([r[k] for r in rs])[0] for k in ("score", "asr", "acc", "ctca", "time_s")},
            **{f"{k}_std": mean_std([r[k] for r in rs])[1] for k in ("score", "asr", "acc", "ctca", "time_s")},
            "score": fmt([r["score"] for r in rs], 1.0), "asr": fmt([r["asr"] for r in rs]),
            "acc": fmt([r["acc"] for r in rs]), "ctca": fmt([r["ctca"] for r in rs]),
            "time_s": fmt([r["time_s"] for r in rs], 1.0),
        })
    return rows


def markdown(rows: list[dict], before, command: str, threads: int) -> str:
    b = before
    lines = [
        "# Baselines on Fashion-MNIST (small CNN, BadNets 3×3 white patch, target 0, 5% poison)",
        "",
        f"Victim before defense: ACC {100 * b.acc:.2f}, ASR {100 * b.asr:.2f}, CTCA {100 * b.ctca:.2f} "
        f"(evaluation half, {b.n_eval} images). Mean ± std over seeds; ASR/ACC/CTCA in %, time in s "
        f"(CPU, {threads} torch thread(s), defense alone; the 2-core machine was shared with other "
        "jobs, so times are inflated and noisy — compare orders of magnitude).",
        "",
        f"Command: `{command}`",
        "",
        "| Method | n | Score (↑) | ASR (↓) | ACC (↑) | CTCA (↑) | Time s (↓) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        score_cell = "-" if r["row"] == "Retraining" else r["score"]
        lines.append(f"| {r['row']} | {r['n']} | {score_cell} | {r['asr']} | {r['acc']} | {r['ctca']} | {r['time_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", default="50,500")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--defenses", default="", help="comma-separated defense names (default: all rows available)")
    parser.add_argument("--tracking-uri", default="sqlite:////work/main/mlruns/mlflow.db")
    parser.add_argument("--retrain-seeds", default=None, help="seeds for Retraining (default: --seeds)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; use 1 when the machine is shared (OpenMP spin-waits under load)")
    parser.add_argument("--resume", action="store_true", help="reuse the runs of an interrupted run (.partial.json)")
    parser.add_argument("--out", default=str(RESULTS / "baselines_table"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    samples = [int(s) for s in args.samples.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    retrain_seeds = [int(s) for s in (args.retrain_seeds or args.seeds).split(",") if s]
    wanted = set(filter(None, args.defenses.split(",")))
    known = set(get_registries().defenses.names())
    rows = [r for r in ROWS if r[1] in known and (not wanted or r[1] in wanted)]
    command = "python benchmarks/baselines_table.py " + " ".join(argv if argv is not None else sys.argv[1:])

    victim = get_victim(VictimSpec(dataset="fashion-mnist"), RunEnv(registries=get_registries(), device=device,
                                                                         tracking_uri=args.tracking_uri))
    print(f"victim: ACC {victim.before.acc:.4f} ASR {victim.before.asr:.4f} CTCA {victim.before.ctca:.4f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict] = []
    done: dict[tuple, dict] = {}
    partial = out.with_suffix(".partial.json")
    if args.resume and partial.exists():
        for r in json.loads(partial.read_text())["runs"]:
            done[(r["row"], r.get("n_requested", r["n"]), r["seed"])] = r
        print(f"resuming: {len(done)} runs already done", flush=True)
    start = time.perf_counter()
    for label, name, bdk in rows:
        for n in ([min(samples)] if name == "retrain" else samples):
            for seed in (retrain_seeds if name == "retrain" else seeds):
                key = (label, n, seed)
                if key in done:
                    runs.append(done[key])
                    continue
                run = run_one(victim, label, name, bdk, n, seed, device)
                run["n_requested"] = n
                runs.append(run)
                print(f"{label:12s} n={run['n']:<6d} seed={seed}  score {run['score']:6.2f}  ASR {100 * run['asr']:6.2f}  "
                      f"ACC {100 * run['acc']:6.2f}  CTCA {100 * run['ctca']:6.2f}  {run['time_s']:7.2f}s "
                      f"[{time.perf_counter() - start:.0f}s]", flush=True)
                # Partial results survive an interruption, clearly marked as such.
                out.with_suffix(".partial.json").write_text(json.dumps({"runs": runs}, indent=1))
    summary = summarise(runs)
    victim_info = {"spec": "fashion-mnist/small-cnn/badnets target 0 poison 0.05", "hash": victim.config_hash,
                   "run_id": victim.run_id, "before": victim.before.to_dict()}
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "victim": victim_info, "samples": samples, "seeds": seeds, "summary": summary,
         "runs": runs, "torch": torch.__version__, "threads": args.threads}, indent=1))
    out.with_suffix(".md").write_text(markdown(summary, victim.before, command, args.threads))
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    print(markdown(summary, victim.before, command, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
