"""The deep fuzz of the whole CLI surface (docs/reliability.md, "The fuzzed CLI surface").

Every slot of ``tests/cli_surface.py`` (every option and argument of every command, every field of
every registered plugin's parameters) is tried with every value of its ``HOSTILE`` list and then
with ``--examples`` values Hypothesis generates (numbers, text, the slot's own choices), each held
to the property of that module: success, or a non-zero exit with one ``Error:`` line and no
traceback, and no run in the store. Counts and each failure go to a JSON file; ``--render`` writes
the section of docs/reliability.md from it.

    .venv/bin/python benchmarks/fuzz_cli.py --examples 40 --out benchmarks/results/fuzz_cli.json --render

``tests/test_cli_fuzz.py`` runs the same property with a few generated values per slot in CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import cli_surface  # noqa: E402  (tests/cli_surface.py)
from hypothesis import HealthCheck, given, settings  # noqa: E402

HEADING = "## The fuzzed CLI surface"


def fuzz(examples: int, only: str | None) -> dict:
    failures: list[dict] = []
    tried = Counter()
    exits = Counter()
    slots = [s for s in cli_surface.all_slots() if not only or only in s.name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fx = cli_surface.make_fixtures(Path(tmp) / "fuzz")

        def one(slot, value: str) -> None:
            verdict = cli_surface.check(slot.build(value, fx), fx)
            tried[slot.name] += 1
            exits[str(verdict.exit_code)] += 1
            if not verdict.ok:
                failures.append({"slot": slot.name, "value": value[:80], "why": verdict.why,
                                 "stderr": verdict.stderr_tail[-400:]})

        for slot in slots:
            for value in cli_surface.HOSTILE:
                one(slot, value)
            if examples:
                @settings(max_examples=examples, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(cli_surface.values(list(slot.choices)))
                def generated(value: str) -> None:
                    one(slot, value)

                generated()
    commands = sorted({s.name.split()[0] for s in slots if not s.name.startswith("--")})
    return {"slots": len(slots), "command_slots": sum(1 for s in slots if not s.name.startswith("--")),
            "param_slots": sum(1 for s in slots if s.name.startswith("--")), "commands": commands,
            "hostile_values": len(cli_surface.HOSTILE), "generated_per_slot": examples,
            "invocations": sum(tried.values()), "exit_codes": dict(sorted(exits.items())),
            "failures": failures, "seconds": round(time.perf_counter() - started, 1)}


def render(result: dict, doc: Path, command: str) -> None:
    lines = [HEADING, "",
             "Every option and argument of every command, and every field of every registered plugin's parameters "
             "(as `k=v`), tried one at a time with hostile values and generated ones (`tests/cli_surface.py` says "
             "which and the property each invocation is held to: success, or a non-zero exit with one `Error:` "
             "line as the last line of stderr, no control character in it, no traceback, and no run in the "
             "store). Commands that would run for minutes are given `--dry-run`, which makes every check a real "
             "run makes before it starts work. Measured with", "", f"    {command}", "",
             "| commands | slots (options + plugin fields) | values per slot | invocations | exit codes | failures | time |",
             "|---|---|---|---|---|---|---|",
             f"| {len(result['commands'])} ({', '.join(result['commands'])}) | {result['slots']} "
             f"({result['command_slots']} + {result['param_slots']}) | {result['hostile_values']} listed + "
             f"{result['generated_per_slot']} generated | {result['invocations']} | "
             f"{', '.join(f'{k}: {v}' for k, v in result['exit_codes'].items())} | {len(result['failures'])} | "
             f"{result['seconds']} s |", ""]
    if result["failures"]:
        lines += ["Failures:", ""] + [f"- `{f['slot']}` = `{f['value']!r}`: {f['why']}" for f in result["failures"][:50]]
        lines.append("")
    text = doc.read_text() if doc.exists() else ""
    start = text.find(HEADING)
    if start >= 0:
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + "\n".join(lines) + ("\n" + text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + "\n".join(lines)
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=40, help="Generated values per slot after the listed ones.")
    parser.add_argument("--only", default=None, help="Only slots whose name holds this text.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz_cli.json")
    parser.add_argument("--render", action="store_true", help="Also write the section of docs/reliability.md.")
    args = parser.parse_args()
    result = fuzz(args.examples, args.only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{result['invocations']} invocations over {result['slots']} slots in {result['seconds']} s: "
          f"{len(result['failures'])} failure(s); written to {args.out}")
    for f in result["failures"][:40]:
        print(f"  {f['slot']} = {f['value']!r}: {f['why']}")
    if args.render and not args.only:
        command = " ".join(["python", "benchmarks/fuzz_cli.py", "--examples", str(args.examples), "--render"])
        render(result, ROOT / "docs" / "reliability.md", command)


if __name__ == "__main__":
    main()
