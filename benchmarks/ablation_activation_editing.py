"""Ablation of the "ours" defense (docs/method.md describes it and reports the numbers).

Run from the repository root:

    .venv/bin/python benchmarks/ablation_activation_editing.py                     # Fashion-MNIST, all sections
    .venv/bin/python benchmarks/ablation_activation_editing.py --dataset digits --samples 5 --samples 25

Victims come from the MLflow store given by --tracking-uri (trained on first use: ~2 min for
Fashion-MNIST on 2 CPU cores, seconds for digits). Results: Markdown + JSON under
benchmarks/results/ablation_activation_editing_<dataset>.{md,json}; every run's raw metrics are in
the JSON. A configuration the defense refuses (e.g. alpha=beta=0, std(A)=0) is recorded as an
error, never as numbers.

Sections (each a grid over seeds and, where noted, n):
  layers    edited layers × activation point (pre/post) × knowledge/source, bn=auto, all n
  bn        BN mode fixed/update × knowledge/source, defaults otherwise, all n
  alphabeta Table 9: α, β ∈ {−1, 0, 1}², BDK and ¬BDK (default source), one n
  gammalam  Figure 4: λ × γ × BN mode, BDK and ¬BDK (default source), one n
  repair    Table 8: repair η ∈ {1e-4, 1e-3, 1e-2, 1e-1} after the default edit, BDK and ¬BDK, one n;
            plus η = 1e-2 at every n
  infer     the target-class inference of nobdk_source=inferred, both rules, every n and seed
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from bdtool.core.errors import BdtoolError  # noqa: E402
from bdtool.core.experiment.context import defense_context  # noqa: E402
from bdtool.core.experiment.evaluation import evaluate, score  # noqa: E402
from bdtool.core.interfaces import DefenseContext  # noqa: E402
from bdtool.core.results import EvalResult  # noqa: E402
from bdtool.core.experiment.env import RunEnv  # noqa: E402
from bdtool.core.experiment.victim import get_victim  # noqa: E402
from bdtool.core.experiment.victim_spec import Victim, VictimSpec  # noqa: E402
from bdtool.defenses.activation_editing import ActivationEditing, infer_target_class  # noqa: E402
from bdtool.defenses.finetune_repair import FinetuneRepair  # noqa: E402
from bdtool.plugins import get_registries  # noqa: E402

CPU = torch.device("cpu")
RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("BDK", "¬BDK all", "¬BDK target", "¬BDK inferred")


def mode_options(mode: str) -> tuple[bool, dict[str, Any]]:
    if mode == "BDK":
        return True, {}
    return False, {"nobdk_source": mode.split()[1]}


def make_context(victim: Victim, n: int, seed: int, bdk: bool, log: dict[str, float]) -> DefenseContext:
    # The one factory the runner uses (bdtool.core.experiment.context): same D_U and class drawer.
    return defense_context(victim, ActivationEditing, n, seed, CPU, trigger=bdk, target=True,
                           log_metric=lambda key, value, step=None: log.__setitem__(key, value))


def metrics(result: EvalResult, before: EvalResult) -> dict[str, float]:
    return {"asr": result.asr, "acc": result.acc, "ctca": result.ctca, "min_class": result.min_class_acc,
            "score": score(result, before)}


class Evaluator:
    """ACC/ASR/CTCA on the evaluation half or a fixed stratified subset of it (``per_class``
    images per class), exactly as ``bdtool.core.experiment.evaluation.evaluate`` computes them.

    Speed-up without approximation: when every parameter and buffer of the model's ``features``
    block equals the victim's (edits confined to the head with BN statistics fixed), the features
    of the clean and stamped evaluation images are computed once and only the head runs.
    """

    def __init__(self, victim: Victim, per_class: int | None) -> None:
        data = victim.data.evaluation
        if per_class:
            keep = torch.cat([torch.nonzero(data.y == c).flatten()[:per_class] for c in range(victim.data.num_classes)])
            data = data.subset(keep.sort().values)
        self.victim, self.data = victim, data
        self.stamped = victim.attack.apply(data.x[data.y != victim.attack.target_class])
        self.prefix = getattr(victim.model, "features", None)
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.prefix is not None and hasattr(victim.model, "classifier"):
            with torch.no_grad():
                self.prefix.eval()
                self.cache = (self._batched(self.prefix, data.x), self._batched(self.prefix, self.stamped))
            self.prefix_state = {k: v.clone() for k, v in self.prefix.state_dict().items()}
        self.before = evaluate(victim.model, data, victim.attack, victim.data.num_classes, CPU)

    @staticmethod
    @torch.no_grad()
    def _batched(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([module(x[i:i + 1024]) for i in range(0, len(x), 1024)])

    def __call__(self, model: torch.nn.Module) -> EvalResult:
        if self.cache is None or not all(torch.equal(v, self.prefix_state[k]) for k, v in model.features.state_dict().items()):
            return evaluate(model, self.data, self.victim.attack, self.victim.data.num_classes, CPU)
        model.eval()
        with torch.no_grad():
            clean = self._batched(model.classifier, self.cache[0]).argmax(1)
            trig = self._batched(model.classifier, self.cache[1]).argmax(1)
        y, target = self.data.y, self.victim.attack.target_class
        per_class = [float((clean[y == c] == c).float().mean()) for c in range(self.victim.data.num_classes)]
        return EvalResult(acc=float((clean == y).float().mean()), asr=float((trig == target).float().mean()),
                          ctca=per_class[target], per_class_acc=per_class, n_eval=len(y), target_class=target)


EVALUATORS: dict[tuple[str, int | None], Evaluator] = {}


def evaluator(victim: Victim, per_class: int | None) -> Evaluator:
    key = (victim.config_hash, per_class)
    if key not in EVALUATORS:
        EVALUATORS[key] = Evaluator(victim, per_class)
    return EVALUATORS[key]


def run_one(victim: Victim, options: dict[str, Any], n: int, seed: int, bdk: bool,
            repair_lr: float | None = None, per_class: int | None = None) -> dict[str, Any]:
    """One defense run (plus optional repair), evaluated on the evaluation half."""
    log: dict[str, float] = {}
    row: dict[str, Any] = {"options": dict(options), "n": n, "seed": seed, "bdk": bdk, "repair_lr": repair_lr}
    try:
        defense = ActivationEditing(ActivationEditing.make_params(options))
        ctx = make_context(victim, n, seed, bdk, log)
        start = time.perf_counter()
        model = defense.defend(victim.model, ctx)
        row["time_s"] = time.perf_counter() - start
        if repair_lr is not None:
            repair = FinetuneRepair(FinetuneRepair.make_params({"lr": repair_lr}))
            start = time.perf_counter()
            model = repair.repair(model, ctx)
            row["repair_time_s"] = time.perf_counter() - start
    except BdtoolError as exc:
        row["error"] = str(exc)
        return row
    ev = evaluator(victim, per_class)
    before = victim.before if per_class is None else ev.before
    row.update(metrics(ev(model), before))
    row["log"] = log
    return row


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return {"error": rows[0]["error"] if rows else "no runs", "runs": len(rows)}
    out: dict[str, Any] = {"runs": len(ok), "failed": len(rows) - len(ok)}
    for key in ("asr", "acc", "ctca", "min_class", "score", "time_s", "repair_time_s"):
        values = [r[key] for r in ok if key in r and not math.isnan(r[key])]
        if values:
            out[key] = (statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0)
    inferred = [r["log"].get("ours.inferred_target_correct") for r in ok if "ours.inferred_target_correct" in r["log"]]
    if inferred:
        out["inference_correct"] = sum(inferred) / len(inferred)
    return out


def fmt(agg: dict[str, Any], key: str, pct: bool = True) -> str:
    if "error" in agg:
        return "error"
    if key not in agg:
        return "–"
    mean, std = agg[key]
    k = 100.0 if pct and key != "score" else 1.0
    digits = 1
    return f"{mean * k:.{digits}f}±{std * k:.{digits}f}"


class Ablation:
    def __init__(self, victim: Victim, seeds: list[int], samples: list[int], per_class: int | None = None,
                 flush: Callable[[], None] | None = None) -> None:
        self.victim = victim
        self.per_class = per_class
        self.flush = flush
        self.seeds = seeds
        self.samples = samples
        self.sections: dict[str, Any] = {}
        self.markdown: list[str] = []
        self.runs = 0
        self.gammalam_modes: tuple[str, ...] = ("BDK", "¬BDK target", "¬BDK all")
        self.grid_n = 50
        self.grid_seeds = len(seeds)
        self.key_samples = [5, 50]

    def key(self, repair_lr: float = 1e-2) -> None:
        """The headline rows on the full evaluation half: ours BDK / ¬BDK (all, target), ± repair."""
        saved, self.per_class = self.per_class, None
        results, lines = [], []
        b = self.victim.before
        lines.append(["victim (before)", "–", "–", f"{100 * b.asr:.1f}", f"{100 * b.acc:.1f}", f"{100 * b.ctca:.1f}",
                      f"{100 * b.min_class_acc:.1f}", "–"])
        for mode in ("BDK", "¬BDK target", "¬BDK all"):
            bdk, opts = mode_options(mode)
            for lr in ((None, repair_lr) if mode != "¬BDK all" else (None,)):
                for n in self.key_samples:
                    r = self.grid(opts, n, bdk, lr)
                    results.append(r)
                    a = r["agg"]
                    lines.append([f"Ours({mode})" + (" +repair" if lr else ""), str(n), "–" if lr is None else f"{lr:g}",
                                  fmt(a, "asr"), fmt(a, "acc"), fmt(a, "ctca"), fmt(a, "min_class"), fmt(a, "score")])
        self.per_class = saved
        self.sections["key"] = results
        self.table("Key configurations (defaults; full evaluation half)", "",
                   ["row", "n", "repair η", "ASR", "ACC", "CTCA", "min class", "Score"], lines)

    def grid(self, options: dict[str, Any], n: int, bdk: bool, repair_lr: float | None = None,
             seeds: list[int] | None = None) -> dict[str, Any]:
        rows = [run_one(self.victim, options, n, seed, bdk, repair_lr, self.per_class) for seed in (seeds or self.seeds)]
        self.runs += len(rows)
        if self.runs % 20 < len(rows):
            print(f"    {self.runs} runs", file=sys.stderr, flush=True)
        return {"options": options, "n": n, "bdk": bdk, "repair_lr": repair_lr, "rows": rows, "agg": aggregate(rows)}

    def table(self, title: str, note: str, header: list[str], lines: list[list[str]]) -> None:
        self.markdown += [f"### {title}", "", note, "", "| " + " | ".join(header) + " |",
                          "|" + "|".join("---" for _ in header) + "|"]
        self.markdown += ["| " + " | ".join(line) + " |" for line in lines]
        self.markdown.append("")

    # ------------------------------------------------------------------ sections

    def layers(self) -> None:
        results, lines = [], []
        for layers in ("last1", "last2", "after-downsampling"):
            for activation in ("pre", "post"):
                if layers == "last1" and activation == "post":
                    continue  # the classifier has no activation after it: post = pre (logits)
                for mode in MODES:
                    bdk, opts = mode_options(mode)
                    for n in (self.samples if activation == "pre" else [self.grid_n]):
                        r = self.grid({"layers": layers, "activation": activation, **opts}, n, bdk)
                        results.append(r)
                        a = r["agg"]
                        lines.append([layers, activation, mode, str(n), fmt(a, "asr"), fmt(a, "acc"), fmt(a, "ctca"),
                                      fmt(a, "min_class"), fmt(a, "score"), _err(a)])
        self.sections["layers"] = results
        self.table("Edited layers × activation point × knowledge (bn=auto, λ=1, γ=0.5, α=0, β=−1)",
                   "ASR/ACC/CTCA/min-class in %, mean±std over seeds; Score as in README \"Metrics\".",
                   ["layers", "act.", "knowledge / D_U", "n", "ASR", "ACC", "CTCA", "min class", "Score", "note"], lines)

    def bn(self) -> None:
        results, lines = [], []
        for bn in ("fixed", "update"):
            for mode in MODES:
                bdk, opts = mode_options(mode)
                if (bn == "fixed") == bdk:
                    continue  # bn=auto (the layers section) already is fixed with BDK, update without
                for n in self.samples:
                    r = self.grid({"bn": bn, **opts}, n, bdk)
                    results.append(r)
                    a = r["agg"]
                    lines.append([bn, mode, str(n), fmt(a, "asr"), fmt(a, "acc"), fmt(a, "ctca"), fmt(a, "score"), _err(a)])
        self.sections["bn"] = results
        self.table("BN moving averages during extraction (defaults otherwise)",
                   "Only the opposite of bn=auto; compare with the `last1` rows of the first table.",
                   ["bn", "knowledge / D_U", "n", "ASR", "ACC", "CTCA", "Score", "note"], lines)

    def alphabeta(self, n: int) -> None:
        results, lines = [], []
        for mode in ("BDK", "¬BDK target", "¬BDK all"):
            bdk, opts = mode_options(mode)
            for beta in (-1.0, 0.0, 1.0):
                cells = [mode, f"β={beta:g}"]
                for alpha in (-1.0, 0.0, 1.0):
                    r = self.grid({"alpha": alpha, "beta": beta, **opts}, n, bdk)
                    results.append(r)
                    a = r["agg"]
                    cells.append("error (std(A)=0)" if "error" in a else
                                 f"{fmt(a, 'score')} (ASR {fmt(a, 'asr')})")
                lines.append(cells)
        self.sections["alphabeta"] = results
        self.table(f"Table 9: Score for α × β (n={n})",
                   "Columns α = −1, 0, 1. ¬BDK has A_poisoned = A_clean, so A = (α+β)·A_clean. "
                   "A ≡ 0 is refused with DefenseInputError (the supplement's 14.34 for A=0 is a "
                   "degenerate 10%-accuracy model).",
                   ["knowledge / D_U", "β", "α=−1", "α=0", "α=1"], lines)

    def gammalam(self, n: int) -> None:
        results, lines = [], []
        for mode in self.gammalam_modes:
            bdk, opts = mode_options(mode)
            for bn in ("fixed", "update"):
                for lam in (0.5, 1.0, 1.5):
                    cells = [mode, bn, f"{lam:g}"]
                    for gamma in (0.0, 0.25, 0.5, 1.0):
                        r = self.grid({"lam": lam, "gamma": gamma, "bn": bn, **opts}, n, bdk,
                                      seeds=self.seeds[:self.grid_seeds])
                        results.append(r)
                        a = r["agg"]
                        cells.append(f"{fmt(a, 'score')} (ASR {fmt(a, 'asr')}, ACC {fmt(a, 'acc')})")
                    lines.append(cells)
        self.sections["gammalam"] = results
        self.table(f"Figure 4: Score for λ × γ × BN mode (n={n})",
                   f"Columns γ = 0, 0.25, 0.5, 1; seeds {self.seeds[:self.grid_seeds]}. γ=0 isolates the effect of the BN update.",
                   ["knowledge / D_U", "bn", "λ", "γ=0", "γ=0.25", "γ=0.5", "γ=1"], lines)

    def repair(self, n: int, default_source: str) -> None:
        results, lines = [], []
        modes = ("BDK", f"¬BDK {default_source}")
        b = self.victim.before
        lines.append(["Before", "–", "–", f"{100 * b.asr:.1f}", f"{100 * b.acc:.1f}", f"{100 * b.ctca:.1f}", "–"])
        for mode in modes:
            bdk, opts = mode_options(mode)
            for lr in (None, 1e-4, 1e-3, 1e-2, 1e-1):
                r = self.grid(opts, n, bdk, lr)
                results.append(r)
                a = r["agg"]
                lines.append([mode, "None" if lr is None else f"{lr:g}", str(n), fmt(a, "asr"), fmt(a, "acc"),
                              fmt(a, "ctca"), fmt(a, "score")])
        for mode in modes:
            bdk, opts = mode_options(mode)
            for n2 in self.samples:
                if n2 == n:
                    continue
                r = self.grid(opts, n2, bdk, 1e-2)
                results.append(r)
                a = r["agg"]
                lines.append([mode, "0.01", str(n2), fmt(a, "asr"), fmt(a, "acc"), fmt(a, "ctca"), fmt(a, "score")])
        self.sections["repair"] = results
        self.table("Table 8: repair (one epoch SGD on the clean D_U) after the default edit",
                   "", ["knowledge / D_U", "η", "n", "ASR", "ACC", "CTCA", "Score"], lines)

    def infer(self, extra_victims: list[Victim]) -> None:
        results, lines = [], []
        for victim in [self.victim, *extra_victims]:
            target = victim.attack.target_class
            for method in ("weight-norm", "mean-logit"):
                for n in self.samples:
                    hits = []
                    for seed in self.seeds:
                        ctx = make_context(victim, n, seed, False, {})
                        cls, evidence = infer_target_class(victim.model, ctx, method)
                        hits.append(cls == target)
                        results.append({"dataset": victim.spec.dataset, "target": target, "method": method, "n": n,
                                        "seed": seed, "inferred": cls, "evidence": evidence.tolist()})
                    lines.append([victim.spec.dataset, str(target), method, str(n), f"{sum(hits)}/{len(hits)}"])
        self.sections["infer"] = results
        self.table("Target-class inference for nobdk_source=inferred (never uses the trigger or evaluation half)",
                   "Correct inferences over seeds.", ["dataset", "true target", "rule", "n", "correct"], lines)


def _err(agg: dict[str, Any]) -> str:
    if "error" in agg:
        return agg["error"][:90]
    notes = []
    if agg.get("failed"):
        notes.append(f"{agg['failed']} failed")
    if "inference_correct" in agg:
        notes.append(f"inferred right {agg['inference_correct']:.0%}")
    return "; ".join(notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--samples", type=int, action="append", help="n (repeatable); default 5, 50, 500")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--grid-n", type=int, default=50, help="n for the α×β, λ×γ and repair-η grids")
    parser.add_argument("--sections", default="key,layers,bn,alphabeta,gammalam,repair,infer")
    parser.add_argument("--infer-targets", default="", help="extra victim targets for the inference section (e.g. 1,2,3)")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")
    parser.add_argument("--experiment", default="bdtool-ablation")
    parser.add_argument("--gammalam-modes", default="", help="e.g. 'BDK,¬BDK target' (default: BDK, ¬BDK target, ¬BDK all)")
    parser.add_argument("--eval-per-class", type=int, default=0,
                        help="grids evaluate on this many evaluation images per class (0 = the whole half); "
                             "the key section always uses the whole half")
    parser.add_argument("--grid-seeds", type=int, default=0, help="seeds for the λ×γ grid (0 = all)")
    parser.add_argument("--key-samples", default="5,50", help="n for the key section")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="output stem (default results/ablation_activation_editing_<dataset>)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    samples = args.samples or [5, 50, 500]
    seeds = list(range(args.seeds))
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]

    env = RunEnv(registries=get_registries(), device=CPU, tracking_uri=args.tracking_uri, experiment=args.experiment)
    started = time.perf_counter()
    victim = get_victim(VictimSpec(dataset=args.dataset), env)
    b = victim.before
    print(f"victim {args.dataset}: ACC {b.acc:.3f} ASR {b.asr:.3f} CTCA {b.ctca:.3f} ({'cached' if victim.reused else 'trained'})",
          file=sys.stderr)
    ab = Ablation(victim, seeds, samples, per_class=args.eval_per_class or None)
    ab.grid_n = args.grid_n
    ab.grid_seeds = args.grid_seeds or len(seeds)
    ab.key_samples = [int(k) for k in args.key_samples.split(",") if k.strip()]
    if args.gammalam_modes:
        ab.gammalam_modes = tuple(m.strip() for m in args.gammalam_modes.split(","))
    default_source = ActivationEditing.Params().nobdk_source
    for section in sections:
        t0 = time.perf_counter()
        if section == "key":
            ab.key()
        elif section == "layers":
            ab.layers()
        elif section == "bn":
            ab.bn()
        elif section == "alphabeta":
            ab.alphabeta(args.grid_n)
        elif section == "gammalam":
            ab.gammalam(args.grid_n)
        elif section == "repair":
            ab.repair(args.grid_n, default_source)
        elif section == "infer":
            extra = [get_victim(VictimSpec(dataset=args.dataset, target=int(t)), env)
                     for t in args.infer_targets.split(",") if t.strip()]
            ab.infer(extra)
        else:
            parser.error(f"unknown section {section}")
        print(f"  {section}: {time.perf_counter() - t0:.1f}s ({ab.runs} runs so far)", file=sys.stderr)
        write(args, argv, victim, ab, seeds, samples, time.perf_counter() - started)
    return 0


def write(args, argv, victim, ab, seeds, samples, total) -> None:
    """Markdown + JSON of everything so far, each written whole then renamed."""
    b = victim.before

    command = "python benchmarks/ablation_activation_editing.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        f"## Ablation of `ours` on {args.dataset}", "",
        f"Command: `{command.strip()}`  ",
        f"Victim: {args.dataset}, small-cnn, BadNets, target {victim.attack.target_class}, poison rate "
        f"{victim.spec.poison_rate} (hash {victim.config_hash}): ACC {100 * b.acc:.1f}, ASR {100 * b.asr:.1f}, "
        f"CTCA {100 * b.ctca:.1f}, min class {100 * b.min_class_acc:.1f}.  ",
        (f"Grids evaluated on {args.eval_per_class} images per class of the evaluation half (victim on that subset: "
         f"ACC {100 * evaluator(victim, args.eval_per_class).before.acc:.1f}, "
         f"ASR {100 * evaluator(victim, args.eval_per_class).before.asr:.1f}); " if args.eval_per_class else "")
        + f"Seeds {seeds} (the seed draws D_U), n ∈ {samples}; {ab.runs} defense runs in {total:.0f} s on "
        f"{platform.processor() or platform.machine()} with {args.threads} torch threads, torch {torch.__version__}.", "",
    ]
    stem = Path(args.out) if args.out else RESULTS / f"ablation_activation_editing_{args.dataset}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp_md, tmp_json = stem.with_suffix(".md.tmp"), stem.with_suffix(".json.tmp")
    tmp_md.write_text("\n".join(header + ab.markdown) + "\n")
    tmp_json.write_text(json.dumps({
        "command": command.strip(), "dataset": args.dataset, "victim": {"hash": victim.config_hash, **b.to_dict()},
        "seeds": seeds, "samples": samples, "runs": ab.runs, "seconds": total, "torch": torch.__version__,
        "defaults": ActivationEditing.Params().__dict__, "sections": ab.sections,
    }, indent=1, default=str))
    tmp_md.replace(stem.with_suffix(".md"))  # written whole, then renamed: no half-written results
    tmp_json.replace(stem.with_suffix(".json"))
    print(f"wrote {stem.with_suffix('.md')} and .json ({ab.runs} runs, {total:.0f}s)", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
