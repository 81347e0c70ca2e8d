"""Peak memory and time of reading a large image folder (docs/own-models.md, "Large folders").

Writes N random RGB PNGs of SIDE×SIDE into ten class folders (once, under ``--folder``), then
loads them as ``--dataset folder:PATH`` does, in a fresh Python process per loader, and reports
that process's peak resident memory (``ru_maxrss``) and the load time beside the size of the
tensors themselves (N × 3 × SIDE × SIDE float32: the floor for any loader that hands the data
sets over as tensors). ``--loader FILE`` measures another version of
``plugins/builtin/image_folder.py`` (e.g. the one before the two-pass reader:
``git show 60dcfe9:plugins/builtin/image_folder.py > /tmp/before.py``).

    .venv/bin/python benchmarks/folder_memory.py --images 50000 --side 32 --folder /tmp/big \\
        --loader /tmp/before.py --out benchmarks/results/folder_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib.util, json, resource, sys, time
path = sys.argv[1]
if path == "installed":
    from bdtool.plugins.builtin.image_folder import load_folder
else:
    spec = importlib.util.spec_from_file_location("loader_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["loader_under_test"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    load_folder = module.load_folder
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
bundle = load_folder(sys.argv[2])
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tensors = sum(t.x.element_size() * t.x.nelement() for t in (bundle.train, bundle.test))
print(json.dumps({"peak_rss_mib": peak / 1024, "before_load_rss_mib": base / 1024, "load_s": seconds,
                  "tensors_mib": tensors / 2**20, "n": len(bundle.train) + len(bundle.test)}))
"""


def make_folder(folder: Path, images: int, side: int) -> None:
    import numpy as np
    from PIL import Image

    marker = folder / f".made-{images}-{side}"
    if marker.exists():
        return
    rng = np.random.default_rng(0)
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(images):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / str(i % 10) / f"{i:06d}.png")
    marker.touch()


def measure(loader: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, loader, str(folder)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"measuring {loader} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--loader", action="append", default=[],
                        help="another image_folder.py to measure beside the installed one (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "folder_memory.json")
    args = parser.parse_args()
    make_folder(args.folder, args.images, args.side)
    results = {name: measure(name, args.folder) for name in [*args.loader, "installed"]}
    payload = {"images": args.images, "side": args.side, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
