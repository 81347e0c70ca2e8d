"""A folder of the user's images as a data set: ``--dataset folder:PATH`` (docs/own-models.md).

Layouts, as torchvision's ``ImageFolder`` reads them (one sub-folder per class):

- ``PATH/train/<class>/…`` and ``PATH/test/<class>/…``: the two splits as given;
- ``PATH/<class>/…``: split by bdtool, 30 % of each class to the test split (stratified, seed 0,
  the split ``digits`` uses).

**The class order is ImageFolder's**: the folder names sorted as text, so folders ``0`` … ``10``
are classes ``0, 1, 10, 2, …`` exactly as a model trained with ``torchvision.datasets.ImageFolder``
numbers them (label 2 is folder ``10``). ``classes=a+b+c`` gives another order (every class folder
named once), or ``classes=FILE``: a text file of the names, one per line, in label order.

Images are kept in [0, 1] like every other data set (8-bit values ÷ 255, 16-bit ÷ 65535).
Channels are inferred (1 when every image is grey, else 3, alpha dropped) and every image must
have one size, unless given: ``size=N`` (N×N) or ``size=HxW`` (non-square, H rows by W columns),
bilinear. A folder is read in two passes: the headers first (size and mode of every file: errors
come before any decoding), then each image decoded straight into the split's preallocated tensor,
so no decoded copy of the folder is held besides the tensors themselves (docs/own-models.md,
"Large folders", measures it). Errors are one line naming the file or folder: an empty class, a
file that is not a readable image, an image of another size. Hidden files and folders (``.*``) are
skipped. Options: ``folder:PATH:size=N|HxW,channels=C,test=0.3,classes=a+b+c``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bdtool.core.data import DataBundle
from bdtool.core.errors import BdtoolError, DataNotFoundError
from bdtool.core.interfaces import DatasetSource
from bdtool.plugins.builtin.image_pixels import unit_pixels
from bdtool.core.params import build_params, parse_key_values, param
from bdtool.core.tensors import LabeledTensors

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")
MAX_SIDE = 4096
"""The largest side ``size=`` takes: a 4096×4096 RGB image is already 200 MB as float32."""


@dataclass
class FolderOptions:
    size: str = ""
    """``N`` (N×N) or ``HxW``: resize every image (bilinear); empty = keep, all of one size."""
    channels: int = 0
    """1 (grey) or 3 (RGB); 0 = inferred."""
    test: float = param(0.3, gt=0, lt=1)
    """Share of each class for the test split when the folder has no train/ and test/."""
    classes: str = ""
    """The class order: ``a+b+c`` or a file of names (one per line); empty = ImageFolder's (text order)."""

    def validate(self) -> None:
        if self.channels not in (0, 1, 3):
            raise ValueError("channels must be 1 or 3")
        self.shape()

    def shape(self) -> tuple[int, int] | None:
        """``size`` as (height, width); None when not given. ValueError for anything else."""
        text = self.size.strip().lower()
        if not text:
            return None
        parts = text.replace("×", "x").split("x")
        if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"size={self.size} is not N or HxW (e.g. size=32 or size=32x48)")
        h, w = (int(parts[0]), int(parts[-1]))
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise ValueError(f"size={self.size}: each side must be in [1, {MAX_SIDE}]")
        return h, w


def parse_location(location: str) -> tuple[Path, FolderOptions]:
    """``PATH`` or ``PATH:k=v,...`` -> (path, options)."""
    path, sep, rest = location.rpartition(":")
    if sep and rest and all("=" in part for part in rest.split(",")):
        options = parse_key_values(rest, "dataset folder")
        return Path(path).expanduser(), build_params(FolderOptions, options, owner="dataset folder")
    return Path(location).expanduser(), FolderOptions()


def _class_names(root: Path, classes: str) -> list[str] | None:
    """``classes=`` as a list of names: ``a+b+c``, or the lines of a file; None when not given."""
    text = classes.strip()
    if not text:
        return None
    if "+" not in text:
        for candidate in (Path(text).expanduser(), root / text):
            if candidate.is_file():
                try:
                    lines = candidate.read_text(encoding="utf-8").splitlines()
                except (OSError, UnicodeDecodeError) as exc:
                    raise BdtoolError(f"folder data set {root}: classes={text} cannot be read ({exc})") from None
                return [line.strip() for line in lines if line.strip()]
    return [name.strip() for name in text.split("+") if name.strip()]


def _class_folders(root: Path, where: Path, order: list[str] | None) -> list[Path]:
    folders = {p.name: p for p in where.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if not folders:
        raise BdtoolError(f"folder data set {root}: {where} holds no class folders; put each class's images in "
                          "a folder of its own (PATH/<class>/ or PATH/train/<class>/ and PATH/test/<class>/)")
    if order is None:  # torchvision's ImageFolder: the names sorted as text
        return [folders[name] for name in sorted(folders)]
    twice = sorted({name for name in order if order.count(name) > 1})
    if twice:
        raise BdtoolError(f"folder data set {root}: classes= names {', '.join(twice)} more than once; name each "
                          "class folder once, in label order")
    missing = [name for name in order if name not in folders]
    extra = sorted(set(folders) - set(order))
    if missing or extra:
        said = "; ".join(part for part in (
            f"no folder for {', '.join(missing[:5])}" if missing else "",
            f"folder(s) {', '.join(extra[:5])} not named" if extra else "") if part)
        raise BdtoolError(f"folder data set {root}: classes= does not match the class folders of {where} ({said}); "
                          "name every class folder once, in label order")
    return [folders[name] for name in order]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


Listed = list[tuple[Path, int]]
"""(file, label) of a split, in class order then file order."""


def _list_split(root: Path, classes: list[Path]) -> Listed:
    listed: Listed = []
    for label, folder in enumerate(classes):
        files = _files(folder)
        if not files:
            raise BdtoolError(f"folder data set {root}: the class folder {folder} holds no images; add images or "
                              "remove the folder")
        listed.extend((path, label) for path in files)
    return listed


def _unreadable(root: Path, path: Path, exc: BaseException) -> BdtoolError:
    reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
    return BdtoolError(f"folder data set {root}: {path} is not a readable image ({reason}); remove or replace it")


class _Reader:
    """Reads the headers, then decodes each image into its row of a preallocated array."""

    def __init__(self, root: Path, options: FolderOptions) -> None:
        self.root, self.options = root, options
        self.resize = options.shape()

    def _errors(self) -> tuple[type[BaseException], ...]:
        from PIL import Image, UnidentifiedImageError  # Pillow comes with torchvision and matplotlib

        return (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)

    def header(self, path: Path) -> tuple[str, tuple[int, int]]:
        """(mode, (width, height)) of ``path`` without decoding its pixels; the file is closed
        here (Pillow keeps a GIF's file open to seek its frames: 1,200 GIFs once ran out of file
        descriptors under ulimit -n 1024)."""
        from PIL import Image

        try:
            with Image.open(path) as opened:
                return opened.mode, opened.size
        except self._errors() as exc:
            raise _unreadable(self.root, path, exc) from None

    def shape(self, listed: Listed) -> tuple[int, int, int]:
        """(grey?, height, width) every image of ``listed`` will have, from the headers alone."""
        first: tuple[Path, tuple[int, int]] | None = None
        grey = True
        for path, _ in listed:
            mode, size = self.header(path)
            grey = grey and mode in GREY_MODES  # a palette image counts as colour
            if self.resize is not None:
                continue
            if first is None:
                first = (path, size)
            elif size != first[1]:
                w, h = first[1]
                raise BdtoolError(f"folder data set {self.root}: {path} is {size[0]}×{size[1]}, {first[0]} is "
                                  f"{w}×{h}; make them one size or give one (folder:PATH:size=N or size=HxW)")
        if self.resize is not None:
            return int(grey), *self.resize
        assert first is not None
        return int(grey), first[1][1], first[1][0]

    def decode_into(self, out: np.ndarray, row: int, path: Path, channels: int) -> None:
        from PIL import Image

        try:
            with Image.open(path) as opened:
                opened.load()
                img = opened if self.resize is None else opened.resize(self.resize[::-1], Image.BILINEAR)
                arr = unit_pixels(img, channels)
        except BdtoolError:
            raise
        except ValueError as exc:  # unit_pixels: a float image outside [0, 1]
            raise BdtoolError(f"folder data set {self.root}: {path} is {exc}") from None
        except self._errors() as exc:
            raise _unreadable(self.root, path, exc) from None
        if arr.shape[:2] != out.shape[2:]:  # a file changed between the passes
            raise BdtoolError(f"folder data set {self.root}: {path} changed while it was read; read it again")
        out[row] = arr.transpose(2, 0, 1)

    def tensors(self, listed: Listed, channels: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.empty((len(listed), channels, height, width), dtype=np.float32)
        for row, (path, _) in enumerate(listed):
            self.decode_into(x, row, path, channels)
        return torch.from_numpy(x), torch.as_tensor([label for _, label in listed], dtype=torch.long)


def _fingerprint(*tensors: torch.Tensor, names: list[str]) -> str:
    digest = hashlib.sha256("\n".join(names).encode())
    for t in tensors:
        digest.update(memoryview(t.contiguous().numpy()).cast("B"))  # no copy: a 50,000-image folder is 586 MiB
    return digest.hexdigest()[:16]


def load_folder(location: str) -> DataBundle:
    root, options = parse_location(location)
    if not root.is_dir():
        raise DataNotFoundError(f"folder data set {root}: no such folder; --dataset folder:PATH names a folder of "
                                "class folders (or of train/ and test/ with class folders)")
    reader = _Reader(root, options)
    order = _class_names(root, options.classes)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_classes = _class_folders(root, root / "train", order)
        test_classes = _class_folders(root, root / "test", order)
        names = [p.name for p in train_classes]
        if names != [p.name for p in test_classes]:
            raise BdtoolError(f"folder data set {root}: train/ has classes {', '.join(names)} but test/ has "
                              f"{', '.join(p.name for p in test_classes)}; give both the same class folders")
        train, test = _list_split(root, train_classes), _list_split(root, test_classes)
    else:
        classes = _class_folders(root, root, order)
        names = [p.name for p in classes]
        listed = _list_split(root, classes)
        train, test = _stratified_split(root, listed, names, options.test)
    if len(names) < 2:
        raise BdtoolError(f"folder data set {root}: one class ({names[0]}); a classifier needs at least two")
    grey, height, width = reader.shape(train + test)
    channels = options.channels or (1 if grey else 3)
    x_tr, y_tr = reader.tensors(train, channels, height, width)
    x_te, y_te = reader.tensors(test, channels, height, width)
    return DataBundle(name=f"folder:{location}", train=LabeledTensors(x_tr, y_tr), test=LabeledTensors(x_te, y_te),
                      num_classes=len(names), class_names=names,
                      fingerprint=_fingerprint(x_tr, y_tr, x_te, y_te, names=names))


def _stratified_split(root: Path, listed: Listed, names: list[str], share: float) -> tuple[Listed, Listed]:
    """``share`` of each class to the test split (stratified, seed 0), from the file list alone:
    nothing is decoded twice."""
    from sklearn.model_selection import train_test_split  # heavy: imported on use

    y = np.asarray([label for _, label in listed])
    counts = np.bincount(y, minlength=len(names))
    if counts.min() < 4:
        small = names[int(counts.argmin())]
        raise BdtoolError(f"folder data set {root}: class {small} has {int(counts.min())} image(s); bdtool splits "
                          "each class into train and test and the test split again in halves: give each class at "
                          "least 4 images, or train/ and test/ folders")
    n_test = int(np.ceil(share * len(y)))
    if not len(names) <= n_test <= len(y) - len(names):
        raise BdtoolError(f"folder data set {root}: test={share:g} of {len(y)} images holds {n_test}; each "
                          f"of the {len(names)} classes needs an image on both sides: choose test between "
                          f"{len(names) / len(y):.3g} and {1 - len(names) / len(y):.3g}")
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=share, stratify=y, random_state=0)
    return [listed[i] for i in train_idx], [listed[i] for i in test_idx]


class ImageFolder(DatasetSource):
    """The user's images (module docstring): ``--dataset folder:PATH[:size=N|HxW,channels=C,test=0.3,classes=...]``."""

    name = "folder"
    description = "your images: folder:PATH with class folders (or train/ and test/ with class folders)"
    takes_location = True

    def load(self, data_dir: str | None = None, download: bool = False) -> DataBundle:
        if not self.location:
            raise BdtoolError("dataset 'folder' needs a location: --dataset folder:PATH")
        return load_folder(self.location)
