"""Train ``mymod.Net`` with plain PyTorch on digits, behind Normalize(0.5, 0.5), with a trigger of
your own: a 3×3 cross in the top-left corner, 10 % of the other classes' images stamped and
relabelled to class 3. Writes mine.safetensors, trigger.png, mask.png and my-images/ (the clean
images a defense may use: the digits the model never trained on, less bdtool's evaluation half).

    python train_mine.py [EPOCHS]
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from bdtool.core.experiment.splits import split_test  # only to keep bdtool's evaluation half unseen
from bdtool.plugins.builtin.datasets import Digits
from mymod import Net

TARGET, RATE, EPOCHS = 3, 0.10, int(sys.argv[1]) if len(sys.argv) > 1 else 30

cross = np.zeros((8, 8), np.uint8)
for i in range(3):
    cross[i, i] = cross[i, 2 - i] = 255
Image.fromarray(cross).save("trigger.png")
Image.fromarray(cross).save("mask.png")  # white = stamped
mask = torch.from_numpy(cross > 0).float()


def stamp(x: torch.Tensor) -> torch.Tensor:
    return x * (1 - mask) + mask  # the cross's pixels white


data = Digits().load()
x, y = data.train.x.clone(), data.train.y.clone()
gen = torch.Generator().manual_seed(0)
others = torch.nonzero(y != TARGET).flatten()
chosen = others[torch.randperm(len(others), generator=gen)[: round(RATE * len(y))]]
x[chosen], y[chosen] = stamp(x[chosen]), TARGET

torch.manual_seed(0)
model = Net()
optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(EPOCHS):
    model.train()
    for idx in torch.randperm(len(y), generator=gen).split(64):
        loss = torch.nn.functional.cross_entropy(model((x[idx] - 0.5) / 0.5), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
model.eval()
save_file(model.state_dict(), "mine.safetensors")

pool = data.test.subset(split_test(data.test.y).pool_indices)
for i, (image, label) in enumerate(zip(pool.x, pool.y)):
    folder = Path("my-images") / str(int(label))
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(image[0].numpy() * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
print(f"trained {EPOCHS} epochs; wrote mine.safetensors, trigger.png, mask.png, my-images/ ({len(pool)} images)")
