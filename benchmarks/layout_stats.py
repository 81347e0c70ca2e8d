"""Files and lines per layer (docs/architecture.md, "Layers") at a git revision.

    python benchmarks/layout_stats.py [REV]      # default HEAD; prints a Markdown table

Reads the revision with ``git ls-tree -r`` and ``git cat-file``, never the working tree, so it
works for revisions whose layout differs: before the layers (9595475 and older) ``core/`` was
flat, and each of its files is mapped to the layer it moved to.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("contracts", "compute", "experiment", "tracking", "plugins", "defenses", "cli", "tests", "benchmarks")

# Flat core/ of the old layout: module -> layer. metrics.py mixed evaluation (experiment) with the
# built-in Metric classes (plugins); it counts as experiment. Anything else in core/ is a contract.
OLD_CORE = {
    "attacks": "plugins", "builtin_datasets": "plugins", "builtin_models": "plugins",
    "metrics": "experiment",
    "victim": "experiment", "splits": "experiment", "runner": "experiment", "rows": "experiment",
    "report": "experiment", "sweeps": "experiment", "progress": "experiment",
    "tracking": "tracking", "serialization": "tracking",
    "device": "compute", "training": "compute",
}


def layer_of(path: str) -> str | None:
    """The layer of a tracked ``.py`` file, or None for files outside the layers."""
    if not path.endswith(".py") or "/build/" in path:
        return None
    parts = path.split("/")
    top = parts[0]
    if top == "core":
        if len(parts) > 2 and parts[1] in ("compute", "experiment", "tracking"):
            return parts[1]
        if len(parts) == 2:
            return OLD_CORE.get(parts[1][:-3], "contracts")
        return None
    if top == "plugins":
        return None if parts[1:2] == ["examples"] else "plugins"
    if top == "bdtool_root":
        return "contracts"
    if top in ("defenses", "cli", "tests", "benchmarks"):
        return top
    return None


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def stats(rev: str) -> dict[str, tuple[int, int]]:
    """layer -> (files, lines) at ``rev``."""
    out = {layer: (0, 0) for layer in LAYERS}
    listing = git("ls-tree", "-r", rev)
    for line in listing.splitlines():
        meta, path = line.split("\t", 1)
        mode, kind, sha = meta.split()
        layer = layer_of(path)
        if kind != "blob" or layer is None:
            continue
        text = git("cat-file", "blob", sha)
        files, lines = out[layer]
        out[layer] = (files + 1, lines + len(text.splitlines()))
    return out


def table(rev: str) -> str:
    commit = git("rev-parse", "--short", rev).strip()
    data = stats(rev)
    rows = [f"Layout at `{rev}` ({commit}): Python files and lines per layer", "",
            "| layer | files | lines |", "| --- | ---: | ---: |"]
    for layer in LAYERS:
        files, lines = data[layer]
        rows.append(f"| {layer} | {files} | {lines} |")
    rows.append(f"| **total** | {sum(f for f, _ in data.values())} | {sum(n for _, n in data.values())} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", default="HEAD", help="git revision (default HEAD)")
    args = parser.parse_args(argv)
    try:
        print(table(args.rev))
    except subprocess.CalledProcessError as exc:
        print(f"git failed: {exc.stderr.strip()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
