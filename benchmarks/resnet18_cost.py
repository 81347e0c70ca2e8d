"""What the built-in ResNet-18 costs on this machine (docs/reproducing.md, "ResNet-18 on
Fashion-MNIST and CIFAR-10"): the wall time of one SGD step on a batch and of one evaluation
pass, at Fashion-MNIST's (1×28×28) and CIFAR-10's (3×32×32) image shape, and what a victim then
costs under each data set's recipe (``DatasetSource.victim_recipe``; CIFAR-10 declares none, so
the core's default, 40 epochs at batch 128).

    .venv/bin/python benchmarks/resnet18_cost.py --device auto --out benchmarks/results/resnet18_cost.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"fashion-mnist": ((1, 28, 28), 60000, 10000), "cifar10": ((3, 32, 32), 50000, 10000)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(device: torch.device, dataset: str, steps: int) -> dict:
    from bdtool.core.experiment.victim_spec import DEFAULT_RECIPE
    from bdtool.plugins import get_registries
    from bdtool.plugins.builtin.models import ResNet18

    (c, h, w), n_train, n_test = SHAPES[dataset]
    recipe = get_registries().datasets.get(dataset).victim_recipe or DEFAULT_RECIPE
    model = ResNet18(c, h, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(recipe.batch_size, c, h, w, device=device)
    y = torch.randint(0, 10, (recipe.batch_size,), device=device)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        _sync(device)
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t)
    step = sum(times[1:]) / steps
    model.eval()
    batch = torch.rand(512, c, h, w, device=device)
    with torch.no_grad():
        model(batch)
        _sync(device)
        t = time.perf_counter()
        model(batch)
        _sync(device)
        eval_512 = time.perf_counter() - t
    batches = math.ceil(n_train / recipe.batch_size)
    return {"image": [c, h, w], "batch_size": recipe.batch_size, "train_step_s": step, "eval_512_s": eval_512,
            "epoch_s": step * batches, "recipe_epochs": recipe.epochs,
            "victim_hours": step * batches * recipe.epochs / 3600,
            "eval_test_set_s": eval_512 * n_test / 512}


def main() -> None:
    from bdtool.core.compute.device import resolve_device

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "resnet18_cost.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    payload = {"device": str(device), "threads": torch.get_num_threads(),
               "results": {name: measure(device, name, args.steps) for name in SHAPES}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
