"""Trigger-free removal measured over victims, not only over draws of D_U (docs/method.md,
"Unknown backdoor"): several victim seeds × draws of D_U, BadNets, Blend and WaNet (its documented
recipe ``wanet:s=1.0``, poison rate 0.1) at two target classes, plus clean victims (poison rate 0).

Run from the repository root (victims come from the store, trained on first use; a digits victim
trains in ~10 s, a Fashion-MNIST one in ~2-8 min on this 2-core CPU):

    .venv/bin/python benchmarks/trigger_free.py --dataset digits
    .venv/bin/python benchmarks/trigger_free.py --dataset fashion-mnist --victim-seeds 0 --targets 0

Every row runs on the runner's own DefenseContext (``core/experiment/context.py``: the row's threat
model decides what it sees; D_U drawn from the unseen pool, never the evaluation half) and is
evaluated on the evaluation half as ``bdtool compare`` does. Results: Markdown + JSON in
docs/results/trigger_free_<dataset>.{md,json}: per victim kind the mean over victims of the mean
over draws, the detection shares (backdoored victims' runs flagged with the right target; clean
victims' runs flagged), and the time of the defense.
"""

from __future__ import annotations

import argparse
import json
import math
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
from bdtool.core.experiment.rows import parse_row  # noqa: E402
from bdtool.core.experiment.victim import RunEnv, VictimSpec, get_victim  # noqa: E402
from bdtool.core.interfaces import Knowledge  # noqa: E402
from bdtool.plugins import get_registries  # noqa: E402
from bdtool.plugins.builtin.metrics import ClassAwareScore  # noqa: E402

CPU = torch.device("cpu")
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"

KINDS: dict[str, tuple[str, tuple[tuple[str, str], ...], float]] = {
    "badnets": ("badnets", (), 0.05),
    "blend": ("blend", (), 0.05),
    "wanet": ("wanet", (("s", "1.0"),), 0.1),  # docs/attacks.md: the recipe that meets the victim bar
    "clean": ("badnets", (), 0.0),  # no poisoned sample: the ASR column is the natural rate
}

ROWS = ["suppress-target", "ours-proj:knowledge=none", "ours-proj:knowledge=target", "ours-proj",
        "ours-proj:knowledge=none,search=nc", "nc", "fp", "anp", "ibau", "basicft"]
"""The null row, ``ours-proj`` under each threat model (and with the previous release's NC search),
and the field's trigger-free defenses."""


def run_row(victim: Any, text: str, n: int, draw: int, registries: Any) -> dict[str, float]:
    row = parse_row(text, Knowledge.TRIGGER, registries)  # as bdtool compare: a row names what it gives up
    logged: dict[str, float] = {}
    ctx = defense_context(victim, row.defense_cls, n, draw, CPU, trigger=row.knowledge is Knowledge.TRIGGER,
                          target=row.knowledge is not Knowledge.NONE,
                          log_metric=lambda key, value, step=None: logged.__setitem__(key, float(value)))
    torch.manual_seed(draw)
    start = time.perf_counter()
    model = row.make_defense().defend(victim.fresh_copy(), ctx)
    seconds = time.perf_counter() - start
    result = evaluate(model, victim.data.evaluation, victim.attack, victim.bundle.num_classes, CPU)
    before = victim.before
    out = {"asr": result.asr, "acc": result.acc, "ctca": result.ctca, "seconds": seconds,
           "acc_ratio": result.acc / before.acc, "ctca_ratio": result.ctca / before.ctca if before.ctca else math.nan}
    out["score"] = score(result, before)
    out["class_score"] = ClassAwareScore().compute(result, before)
    for key in ("detected", "detected_class", "detection_score"):
        name = f"{row.defense_name}.{key}"
        if name in logged:
            out[key] = logged[name]
    if "nc.detected_class" in logged:
        out["detected_class"] = logged["nc.detected_class"]
        out["detected"] = float(logged["nc.detected_class"] >= 0)
    return out


def fmt(values: list[float], scale: float = 1.0) -> str:
    values = [v for v in values if v == v]
    return f"{statistics.mean(values) * scale:.1f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--kinds", default="badnets,blend,wanet,clean")
    parser.add_argument("--targets", default="0,5")
    parser.add_argument("--victim-seeds", default="0,1,2")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--rows", default=",".join(ROWS), help="row texts (bdtool compare --defense values) separated by ';'")
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--summarise-only", action="store_true",
                        help="rewrite the Markdown table from the JSON of an earlier run with the same options")
    args = parser.parse_args()
    rows = ROWS if args.rows == ",".join(ROWS) else args.rows.split(";")
    stem = RESULTS / f"trigger_free_{args.dataset}{args.tag}"
    if args.summarise_only:
        stem.with_suffix(".md").write_text(summarise(json.loads(stem.with_suffix(".json").read_text()), args, rows))
        print(stem.with_suffix(".md").read_text())
        return
    registries = get_registries()
    env = RunEnv(registries=registries, device=CPU, tracking_uri=args.tracking_uri, experiment="trigger-free")
    records: list[dict[str, Any]] = []
    for kind in args.kinds.split(","):
        attack, options, rate = KINDS[kind]
        for target in ([int(t) for t in args.targets.split(",")] if kind != "clean" else [0]):
            for vseed in [int(s) for s in args.victim_seeds.split(",")]:
                spec = VictimSpec(dataset=args.dataset, attack=attack, attack_options=options, target=target,
                                  poison_rate=rate, seed=vseed)
                victim = get_victim(spec, env)
                b = victim.before
                print(f"{args.dataset} {kind} target {target} victim seed {vseed}: ACC {b.acc:.4f} ASR {b.asr:.4f} "
                      f"CTCA {b.ctca:.4f}", flush=True)
                RESULTS.mkdir(parents=True, exist_ok=True)
                stem.with_suffix(".json").write_text(json.dumps(records, indent=1))  # kept if the run is stopped
                for text in rows:
                    for draw in range(args.draws):
                        try:
                            out = run_row(victim, text, args.samples, draw, registries)
                        except BdtoolError as exc:
                            out = {"error": str(exc)}
                        records.append({"kind": kind, "target": target, "victim_seed": vseed, "draw": draw,
                                        "row": text, "before": {"acc": b.acc, "asr": b.asr, "ctca": b.ctca}, **out})
                        if "error" not in out:
                            print(f"  {text:40s} d={draw} ASR {out['asr']*100:5.1f} ACC {out['acc']*100:5.1f} "
                                  f"CTCA {out['ctca']*100:5.1f} det {out.get('detected', '-')}/{out.get('detected_class', '-')}"
                                  f" {out['seconds']:.2f}s", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(records, indent=1))
    stem.with_suffix(".md").write_text(summarise(records, args, rows))
    print(stem.with_suffix(".md").read_text())


def summarise(records: list[dict[str, Any]], args: argparse.Namespace, rows: list[str]) -> str:
    lines = [f"# Trigger-free removal, {args.dataset}, n = {args.samples}", "",
             "Command: `.venv/bin/python benchmarks/trigger_free.py " +
             f"--dataset {args.dataset} --kinds {args.kinds} --targets {args.targets} "
             f"--victim-seeds {args.victim_seeds} --draws {args.draws}" +
             (f" --rows '{args.rows}'" if rows != ROWS else "") + (f" --tag {args.tag}" if args.tag else "") + "`", "",
             "Per victim kind: mean over victims of the mean over draws of D_U. ASR, ACC, CTCA in %; "
             "ACC/CTCA ratio = after / before. Found = share of runs that flagged a backdoor at the victim's "
             "target (backdoored victims) or flagged any class (clean victims). Time = the defense's wall time.", "",
             "| victim | row | ASR | ACC | CTCA | ACC ratio | CTCA ratio | ClassScore | found | time s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in dict.fromkeys(r["kind"] for r in records):
        for text in rows:
            runs = [r for r in records if r["kind"] == kind and r["row"] == text and "error" not in r]
            if not runs:
                continue
            victims = sorted({(r["target"], r["victim_seed"]) for r in runs})

            def per_victim(key: str) -> list[float]:
                return [statistics.mean([r[key] for r in runs if (r["target"], r["victim_seed"]) == v and r.get(key) == r.get(key)] or [math.nan])
                        for v in victims]

            detected = [r for r in runs if "detected" in r]
            if detected:
                if kind == "clean":
                    found = statistics.mean([r["detected"] for r in detected])
                else:
                    found = statistics.mean([float(r["detected"] > 0 and int(r["detected_class"]) == r["target"]) for r in detected])
                found_text = f"{found * 100:.0f} %"
            else:
                found_text = "-"
            cs = "-" if kind == "clean" else fmt(per_victim("class_score"))
            lines.append(f"| {kind} ({len(victims)} victims × {args.draws}) | `{text}` | {fmt(per_victim('asr'), 100)} | "
                         f"{fmt(per_victim('acc'), 100)} | {fmt(per_victim('ctca'), 100)} | {fmt(per_victim('acc_ratio'), 100)} | "
                         f"{fmt(per_victim('ctca_ratio'), 100)} | {cs} | {found_text} | {fmt(per_victim('seconds'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
