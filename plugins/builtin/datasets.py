"""Built-in datasets: scikit-learn's embedded ``digits`` and torchvision-backed image sets.

``digits`` needs no download (the default demo and the tests). Fashion-MNIST is read from
Debian's ``dataset-fashion-mnist`` files when present (README "Data"); the others come through
torchvision from ``--data-dir``, downloading only with ``--download``. scikit-learn and
torchvision are heavy, so each is imported inside the loader that uses it. ``folder:PATH`` reads a
folder of the user's images (``plugins/builtin/image_folder.py``).
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

import bdtool
from bdtool.core.compute.training import TrainConfig
from bdtool.core.data import DataBundle
from bdtool.core.errors import DataNotFoundError
from bdtool.core.interfaces import DatasetSource
from bdtool.core.tensors import LabeledTensors
from bdtool.plugins.builtin.image_folder import ImageFolder

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_DIR = Path(os.environ.get("BDTOOL_DATA_DIR", "~/.cache/bdtool/data")).expanduser()


def _from_uint8_nhwc(images: np.ndarray) -> torch.Tensor:
    arr = torch.as_tensor(np.ascontiguousarray(images))
    if arr.ndim == 3:
        arr = arr.unsqueeze(-1)
    return arr.permute(0, 3, 1, 2).contiguous().float().div_(255.0)


class Digits(DatasetSource):
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes), split 70/30 by a
    fixed stratified seed. Pixel values 0..16 are scaled to [0,1]."""

    name = "digits"
    description = "scikit-learn's embedded 8x8 digits (no download)"
    # Victim recipes measured on the 2-core CPU machine: digits reaches ACC ~0.97 / ASR ~1.0 in a few
    # seconds, Fashion-MNIST ACC >= 0.88 / ASR >= 0.95 in 6 epochs (~2 min). See docs/reproducing.md, "Victims".
    victim_recipe = TrainConfig(epochs=20, lr=0.05, batch_size=64)

    def load(self, data_dir: str | None = None, download: bool = False) -> DataBundle:
        from sklearn.datasets import load_digits  # heavy: imported on use
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        y = torch.as_tensor(digits.target, dtype=torch.long)
        train_idx, test_idx = train_test_split(
            np.arange(len(y)), test_size=0.3, stratify=digits.target, random_state=0
        )
        return DataBundle(
            name=self.name,
            train=LabeledTensors(x[train_idx], y[train_idx]),
            test=LabeledTensors(x[test_idx], y[test_idx]),
            num_classes=10,
            class_names=[str(i) for i in range(10)],
        )


class _TorchvisionSource(DatasetSource):
    """Shared loading through a torchvision dataset class; subclasses say which and how."""

    folder: ClassVar[str]
    how_to_get: ClassVar[str] = "pass --data-dir pointing at a copy, or --download when online"

    def root(self, data_dir: str | None) -> Path:
        return Path(data_dir).expanduser() if data_dir else DEFAULT_DATA_DIR

    def prepare(self, root: Path) -> None:
        """Hook to put files where torchvision looks (Fashion-MNIST from Debian)."""

    def open_split(self, root: Path, train: bool, download: bool) -> Any:
        raise NotImplementedError

    def load(self, data_dir: str | None = None, download: bool = False) -> DataBundle:
        root = self.root(data_dir)
        self.prepare(root)
        try:
            train = self.open_split(root, True, download)
            test = self.open_split(root, False, download)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            where = f"in {root}"
            raise DataNotFoundError(
                f"dataset {self.name} not found {where}; {self.how_to_get} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        x_tr, y_tr, classes = self.tensors(train)
        x_te, y_te, _ = self.tensors(test)
        return DataBundle(self.name, LabeledTensors(x_tr, y_tr), LabeledTensors(x_te, y_te),
                          num_classes=len(classes), class_names=list(classes))

    def tensors(self, ds: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        data = ds.data
        data = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        targets = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
        return _from_uint8_nhwc(data), targets, list(ds.classes)


class FashionMNIST(_TorchvisionSource):
    """Fashion-MNIST (28×28 grey, 10 classes). Debian's ``dataset-fashion-mnist`` ships the
    original ``.gz`` files, which torchvision 0.29 will not read in place; they are decompressed
    once into ``<data-dir>/FashionMNIST/raw/`` (README "Data")."""

    name = "fashion-mnist"
    description = "Fashion-MNIST 28x28 (Debian dataset-fashion-mnist, or --download)"
    victim_recipe = TrainConfig(epochs=6, lr=0.05, batch_size=128)
    how_to_get = ("install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
                  "pass --data-dir with a FashionMNIST/raw folder, or --download when online")
    FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def prepare(self, root: Path) -> None:
        raw = root / "FashionMNIST" / "raw"
        if all((raw / f).exists() for f in self.FILES) or not DEBIAN_FASHION_MNIST.is_dir():
            return
        raw.mkdir(parents=True, exist_ok=True)
        for f in self.FILES:
            src = DEBIAN_FASHION_MNIST / f"{f}.gz"
            if src.exists() and not (raw / f).exists():
                tmp = raw / f"{f}.part"
                with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                tmp.replace(raw / f)

    def open_split(self, root: Path, train: bool, download: bool) -> Any:
        from torchvision.datasets import FashionMNIST as TV  # heavy: imported on use

        return TV(str(root), train=train, download=download)


class MNIST(_TorchvisionSource):
    name = "mnist"
    description = "MNIST 28x28 (torchvision; --data-dir or --download)"
    victim_recipe = TrainConfig(epochs=4, lr=0.05, batch_size=128)

    def open_split(self, root: Path, train: bool, download: bool) -> Any:
        from torchvision.datasets import MNIST as TV  # heavy: imported on use

        return TV(str(root), train=train, download=download)


class CIFAR10(_TorchvisionSource):
    name = "cifar10"
    description = "CIFAR-10 32x32 colour (torchvision; --data-dir or --download)"

    def open_split(self, root: Path, train: bool, download: bool) -> Any:
        from torchvision.datasets import CIFAR10 as TV  # heavy: imported on use

        return TV(str(root), train=train, download=download)


class SVHN(_TorchvisionSource):
    name = "svhn"
    description = "SVHN 32x32 colour (torchvision; --data-dir or --download)"

    def open_split(self, root: Path, train: bool, download: bool) -> Any:
        from torchvision.datasets import SVHN as TV  # heavy: imported on use

        return TV(str(root), split="train" if train else "test", download=download)

    def tensors(self, ds: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        x = torch.as_tensor(ds.data).float().div_(255.0)  # already NCHW
        return x, torch.as_tensor(ds.labels, dtype=torch.long), [str(i) for i in range(10)]


class GTSRB(_TorchvisionSource):
    """German traffic signs (43 classes), resized to 32×32 as is usual in backdoor papers."""

    name = "gtsrb"
    description = "GTSRB resized to 32x32 (torchvision; --data-dir or --download)"

    def open_split(self, root: Path, train: bool, download: bool) -> Any:
        from torchvision import transforms  # heavy: imported on use
        from torchvision.datasets import GTSRB as TV  # heavy: imported on use

        return TV(str(root), split="train" if train else "test", download=download,
                  transform=transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()]))

    def tensors(self, ds: Any) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        xs, ys = [], []
        for img, label in ds:  # decodes every image once; GTSRB has no in-memory array
            xs.append(img)
            ys.append(label)
        return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long), [str(i) for i in range(43)]


BUILTIN_DATASETS: tuple[type[DatasetSource], ...] = (Digits, FashionMNIST, MNIST, CIFAR10, SVHN, GTSRB, ImageFolder)


@bdtool.hookimpl
def bdtool_register_datasets(register: Callable[..., None]) -> None:
    for source in BUILTIN_DATASETS:
        register(source)
