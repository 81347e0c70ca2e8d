"""A folder of the user's images as a data set: ``--dataset folder:PATH`` (docs/own-models.md).

Layouts, as torchvision's ``ImageFolder`` reads them (one sub-folder per class, the class names
sorted, numerically when they are all whole numbers, so ``0`` … ``10`` keep their order):

- ``PATH/train/<class>/…`` and ``PATH/test/<class>/…``: the two splits as given;
- ``PATH/<class>/…``: split by bdtool, 30 % of each class to the test split (stratified, seed 0,
  the split ``digits`` uses).

Images are read with Pillow, every one of them, and kept in [0, 1] like every other data set
(8-bit values ÷ 255, 16-bit ÷ 65535). Channels are inferred (1 when every image is grey, else 3,
alpha dropped) and the size must be one square size, unless given:
``folder:PATH:size=N,channels=C,test=0.3``. Errors are one line naming the file or folder: an
empty class, a file that is not a readable image, an image of another size. Hidden files (``.*``)
are skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bdtool.core.data import DataBundle
from bdtool.core.errors import BdtoolError, DataNotFoundError
from bdtool.core.interfaces import DatasetSource
from bdtool.plugins.builtin.image_pixels import unit_pixels
from bdtool.core.params import build_params, parse_key_values, param
from bdtool.core.tensors import LabeledTensors

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class FolderOptions:
    size: int = param(0, ge=0, le=4096)
    """Resize every image to size×size (bilinear); 0 = keep, and all must share one square size. At
    most 4096: a 4096×4096 RGB image is already 200 MB as float32."""
    channels: int = 0
    """1 (grey) or 3 (RGB); 0 = inferred."""
    test: float = param(0.3, gt=0, lt=1)
    """Share of each class for the test split when the folder has no train/ and test/."""

    def validate(self) -> None:
        if self.channels not in (0, 1, 3):
            raise ValueError("channels must be 1 or 3")


def parse_location(location: str) -> tuple[Path, FolderOptions]:
    """``PATH`` or ``PATH:k=v,...`` -> (path, options)."""
    path, sep, rest = location.rpartition(":")
    if sep and rest and all("=" in part for part in rest.split(",")):
        options = parse_key_values(rest, "dataset folder")
        return Path(path).expanduser(), build_params(FolderOptions, options, owner="dataset folder")
    return Path(location).expanduser(), FolderOptions()


def _class_folders(root: Path, where: Path) -> list[Path]:
    folders = [p for p in where.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        raise BdtoolError(f"folder data set {root}: {where} holds no class folders; put each class's images in "
                          "a folder of its own (PATH/<class>/ or PATH/train/<class>/ and PATH/test/<class>/)")
    if all(p.name.isdigit() for p in folders):
        return sorted(folders, key=lambda p: int(p.name))
    return sorted(folders, key=lambda p: p.name)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class _Reader:
    """Reads images into arrays, inferring or applying the channels and size."""

    def __init__(self, root: Path, options: FolderOptions) -> None:
        self.root, self.options = root, options
        self.first: tuple[Path, tuple[int, int]] | None = None

    def open(self, path: Path) -> Any:
        from PIL import Image, UnidentifiedImageError  # Pillow comes with torchvision and matplotlib

        try:
            with Image.open(path) as opened:  # closed here: Pillow keeps a GIF's file open to seek its frames,
                opened.load()  # so a folder of 1,200 GIFs ran out of file descriptors under ulimit -n 1024
                img = opened.copy()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            raise BdtoolError(f"folder data set {self.root}: {path} is not a readable image ({reason}); "
                              "remove or replace it") from None
        return img

    def array(self, img: Any, path: Path, channels: int) -> np.ndarray:
        from PIL import Image

        size = self.options.size
        if size:
            img = img.resize((size, size), Image.BILINEAR)
        elif self.first is None:
            if img.width != img.height:
                raise BdtoolError(f"folder data set {self.root}: {path} is {img.width}×{img.height}; bdtool's models "
                                  "take square images: crop them or give a size (folder:PATH:size=N)")
            self.first = (path, img.size)
        elif img.size != self.first[1]:
            w, h = self.first[1]
            raise BdtoolError(f"folder data set {self.root}: {path} is {img.width}×{img.height}, {self.first[0]} is "
                              f"{w}×{h}; make them one size or give one (folder:PATH:size=N)")
        try:
            arr = unit_pixels(img, channels)
        except ValueError as exc:
            raise BdtoolError(f"folder data set {self.root}: {path} is {exc}") from None
        return arr.transpose(2, 0, 1)


Opened = list[tuple[Any, Path, int]]
"""(image, file, label) of a split, every file opened and decoded once."""


def _open_split(reader: _Reader, root: Path, classes: list[Path]) -> Opened:
    opened: Opened = []
    for label, folder in enumerate(classes):
        files = _files(folder)
        if not files:
            raise BdtoolError(f"folder data set {root}: the class folder {folder} holds no images; add images or "
                              "remove the folder")
        opened.extend((reader.open(path), path, label) for path in files)
    return opened


def _channels(opened: Opened) -> int:
    """1 when every image is grey (a palette image counts as colour), else 3."""
    return 1 if all(img.mode in GREY_MODES for img, _, _ in opened) else 3


def _tensors(reader: _Reader, opened: Opened, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = np.stack([reader.array(img, path, channels) for img, path, _ in opened])
    return torch.from_numpy(x).float(), torch.as_tensor([label for _, _, label in opened], dtype=torch.long)


def _fingerprint(*tensors: torch.Tensor, names: list[str]) -> str:
    digest = hashlib.sha256("\n".join(names).encode())
    for t in tensors:
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_folder(location: str) -> DataBundle:
    root, options = parse_location(location)
    if not root.is_dir():
        raise DataNotFoundError(f"folder data set {root}: no such folder; --dataset folder:PATH names a folder of "
                                "class folders (or of train/ and test/ with class folders)")
    reader = _Reader(root, options)
    split = (root / "train").is_dir() and (root / "test").is_dir()
    if split:
        train_classes, test_classes = _class_folders(root, root / "train"), _class_folders(root, root / "test")
        names = [p.name for p in train_classes]
        if names != [p.name for p in test_classes]:
            raise BdtoolError(f"folder data set {root}: train/ has classes {', '.join(names)} but test/ has "
                              f"{', '.join(p.name for p in test_classes)}; give both the same class folders")
        train, test = _open_split(reader, root, train_classes), _open_split(reader, root, test_classes)
        channels = options.channels or _channels(train + test)
        (x_tr, y_tr), (x_te, y_te) = _tensors(reader, train, channels), _tensors(reader, test, channels)
    else:
        classes = _class_folders(root, root)
        names = [p.name for p in classes]
        opened = _open_split(reader, root, classes)
        x, y = _tensors(reader, opened, options.channels or _channels(opened))
        from sklearn.model_selection import train_test_split  # heavy: imported on use

        counts = np.bincount(y.numpy(), minlength=len(names))
        if counts.min() < 4:
            small = names[int(counts.argmin())]
            raise BdtoolError(f"folder data set {root}: class {small} has {int(counts.min())} image(s); bdtool splits "
                              "each class into train and test and the test split again in halves: give each class at "
                              "least 4 images, or train/ and test/ folders")
        n_test = int(np.ceil(options.test * len(y)))
        if not len(names) <= n_test <= len(y) - len(names):
            raise BdtoolError(f"folder data set {root}: test={options.test:g} of {len(y)} images holds {n_test}; each "
                              f"of the {len(names)} classes needs an image on both sides: choose test between "
                              f"{len(names) / len(y):.3g} and {1 - len(names) / len(y):.3g}")
        train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=options.test, stratify=y.numpy(),
                                               random_state=0)
        x_tr, y_tr, x_te, y_te = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    if len(names) < 2:
        raise BdtoolError(f"folder data set {root}: one class ({names[0]}); a classifier needs at least two")
    return DataBundle(name=f"folder:{location}", train=LabeledTensors(x_tr, y_tr), test=LabeledTensors(x_te, y_te),
                      num_classes=len(names), class_names=names,
                      fingerprint=_fingerprint(x_tr, y_tr, x_te, y_te, names=names))


class ImageFolder(DatasetSource):
    """The user's images (module docstring): ``--dataset folder:PATH[:size=N,channels=C,test=0.3]``."""

    name = "folder"
    description = "your images: folder:PATH with class folders (or train/ and test/ with class folders)"
    takes_location = True

    def load(self, data_dir: str | None = None, download: bool = False) -> DataBundle:
        if not self.location:
            raise BdtoolError("dataset 'folder' needs a location: --dataset folder:PATH")
        return load_folder(self.location)
