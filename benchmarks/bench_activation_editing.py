"""Wall time of the "ours" defense against a bare no-grad forward pass over the same D_U.

    .venv/bin/python benchmarks/bench_activation_editing.py [--dataset fashion-mnist] [--repeats 7]

For n in 5, 50, 500, 5000 it times, interleaved and repeated (median reported):
  - forward: ``model.eval()`` + one ``torch.no_grad`` forward over D_U in batches of the defense's
    extraction batch size (the reference: one pass);
  - ours ¬BDK (nobdk_source=all, bn=auto → update) and ours BDK (α=0 → one stamped pass), timed
    around ``Defense.defend`` (so including its private deep copy of the model) and around
    ``apply`` alone;
  - ours ¬BDK with nobdk_source=target (n ≤ the pool's target-class count), whose D_U is drawn by
    the defense itself; its reference pass is over those same target-class images.
  - ours-proj (the class-preserving edit, trigger known), timed around ``defend`` and ``apply``,
    with its rank search (the default), at a fixed rank=1 (no search) and with the strength search
    as well (scale=search: 8 ranks × 20 strengths in the one extra pass). Without the trigger its
    Neural Cleanse trigger search is gradient descent, timed by the ablation
    (benchmarks/ablation_class_preserving.py, "search s"), not here.
Targets (docs/method.md, "Benchmark"): ratio ≤ 1.5 without BDK, about 2 passes with BDK; ours-proj
≤ 3 passes (issue: "Class-preserving edit").
Results: benchmarks/results/bench_activation_editing_<dataset>.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from bdtool.core.experiment.context import defense_context  # noqa: E402
from bdtool.core.experiment.env import RunEnv  # noqa: E402
from bdtool.core.experiment.victim import get_victim  # noqa: E402
from bdtool.core.experiment.victim_spec import VictimSpec  # noqa: E402
from bdtool.defenses.activation_editing import ActivationEditing  # noqa: E402
from bdtool.defenses.activation_subspace import SubspaceEditing  # noqa: E402
from bdtool.plugins import get_registries  # noqa: E402

CPU = torch.device("cpu")
RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def bare_forward(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> None:
    model.eval()
    for start in range(0, len(x), batch_size):
        model(x[start:start + batch_size])


def timeit(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--samples", type=int, action="append", help="default 5, 50, 500, 5000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")
    parser.add_argument("--experiment", default="bdtool-ablation")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = args.samples or [5, 50, 500, 5000]

    victim = get_victim(VictimSpec(dataset=args.dataset), RunEnv(registries=get_registries(), device=CPU,
                                                                 tracking_uri=args.tracking_uri,
                                                                 experiment=args.experiment))
    data = victim.data
    target = victim.attack.target_class
    target_pool = int((data.pool.y == target).sum())
    batch = ActivationEditing.Params().batch_size
    rows: list[dict[str, Any]] = []
    for n in samples:
        if n > len(data.pool):
            continue
        # Contexts from the runner's factory, built once outside the timed calls (same D_U).
        contexts = {bdk: defense_context(victim, ActivationEditing, n, 0, CPU, trigger=bdk, target=True)
                    for bdk in (False, True)}
        unlearn = contexts[False].unlearn

        def ctx(bdk: bool):
            return contexts[bdk]

        variants: dict[str, Callable[[], Any]] = {}
        ref = copy.deepcopy(victim.model)
        variants["forward"] = lambda: bare_forward(ref, unlearn.x, batch)
        nobdk = ActivationEditing(ActivationEditing.make_params({"nobdk_source": "all"}))
        bdk = ActivationEditing()
        variants["ours ¬BDK (all)"] = lambda: nobdk.defend(victim.model, ctx(False))
        variants["ours BDK"] = lambda: bdk.defend(victim.model, ctx(True))
        # the class-preserving edit: clean and stamped passes, the whitening, an SVD, the rank search's pass
        proj = SubspaceEditing()
        variants["ours-proj BDK"] = lambda: proj.defend(victim.model, ctx(True))
        fixed = SubspaceEditing(SubspaceEditing.make_params({"rank": "1"}))  # no search: two passes
        variants["ours-proj BDK, rank=1"] = lambda: fixed.defend(victim.model, ctx(True))
        searched = SubspaceEditing(SubspaceEditing.make_params({"scale": "search"}))  # 8 ranks × 20 strengths
        variants["ours-proj BDK, scale=search"] = lambda: searched.defend(victim.model, ctx(True))
        proj_work = [copy.deepcopy(victim.model) for _ in range(args.repeats + 1)]
        variants["ours-proj BDK, apply only"] = lambda: proj.apply(proj_work.pop(), ctx(True))
        work = [copy.deepcopy(victim.model) for _ in range(args.repeats + 1)]
        variants["ours ¬BDK (all), apply only"] = lambda: nobdk.apply(work.pop(), ctx(False))
        if n <= target_pool:
            target_x = data.draw_unlearn(n, 0, target).x
            variants["forward (target-class D_U)"] = lambda: bare_forward(ref, target_x, batch)
            tgt = ActivationEditing(ActivationEditing.make_params({"nobdk_source": "target"}))
            variants["ours ¬BDK (target)"] = lambda: tgt.defend(victim.model, ctx(False))
        for fn in variants.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):  # interleaved so load changes hit every variant alike
            for key, fn in variants.items():
                times[key].append(timeit(fn))
        med = {k: statistics.median(v) for k, v in times.items()}
        for key, value in med.items():
            if key.startswith("forward"):
                continue
            reference = med["forward (target-class D_U)"] if "target" in key else med["forward"]
            rows.append({"n": n, "variant": key, "median_s": value, "forward_s": reference,
                         "ratio": value / reference, "all_s": times[key], "forward_all_s": times["forward"]})
        print(f"n={n}: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in med.items()), file=sys.stderr)

    command = "python benchmarks/bench_activation_editing.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [f"## Benchmark: `ours` against one forward pass ({args.dataset})", "",
          f"Command: `{command.strip()}`  ",
          f"Median of {args.repeats} interleaved repeats; {args.threads} torch threads; CPU "
          f"{platform.processor() or platform.machine()}; torch {torch.__version__}. Defense time is "
          "`Defense.defend` (includes its deep copy of the model) unless marked 'apply only'.", "",
          "| n | variant | defense (ms) | forward (ms) | ratio |", "|---|---|---|---|---|"]
    md += [f"| {r['n']} | {r['variant']} | {1000 * r['median_s']:.1f} | {1000 * r['forward_s']:.1f} | {r['ratio']:.2f} |"
           for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"bench_activation_editing_{args.dataset}"
    stem.with_suffix(".md.tmp").write_text("\n".join(md) + "\n")
    stem.with_suffix(".json.tmp").write_text(json.dumps({"command": command.strip(), "repeats": args.repeats,
                                                         "threads": args.threads, "rows": rows}, indent=1))
    stem.with_suffix(".md.tmp").replace(stem.with_suffix(".md"))
    stem.with_suffix(".json.tmp").replace(stem.with_suffix(".json"))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
