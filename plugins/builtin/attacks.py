"""Built-in attacks: BadNets (Gu et al. 2017), Blend (Chen et al. 2017), and ``image``: a trigger
the user holds as an image and a mask (``bdtool defend --trigger-image/--trigger-mask``,
docs/own-models.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

import bdtool
from bdtool.core.interfaces import Attack
from bdtool.core.params import param

Position = Literal["bottom-right", "bottom-left", "top-right", "top-left"]



def checkerboard(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """A (1, H, W) black-and-white checkerboard, white at the top-left pixel (BadNets' checkerboard
    patch; label-consistent's corner patches, Turner et al. 2019)."""
    rows = torch.arange(h, device=device).view(-1, 1)
    cols = torch.arange(w, device=device).view(1, -1)
    return ((rows + cols) % 2 == 0).float().unsqueeze(0)

def automatic_patch_size(size: int, image_size: int) -> int:
    """A patch trigger's side: ``size`` px when given, else max(2, image_size // 8) (2 px on 8×8
    digits, 3 px on 28×28): BadNets' rule, shared by every patch attack (LC, Adap-Patch, proj-aware)."""
    return size or max(2, image_size // 8)


@dataclass
class BadNetsParams:
    size: int = param(0, ge=0)
    """Patch side in pixels; 0 = automatic, max(2, image_size // 8) (2 px on 8×8, 3 px on 28×28)."""
    position: Position = "bottom-right"
    margin: int = param(0, ge=0)
    """Pixels between the patch and the image border."""
    pattern: Literal["white", "checkerboard"] = "white"


class BadNets(Attack):
    """A square patch stamped at a fixed position (BadNets, Gu et al. 2017)."""

    name = "badnets"
    description = "square patch (size, position, margin, pattern white|checkerboard)"
    Params = BadNetsParams

    def patch_size(self, image_size: int) -> int:
        return automatic_patch_size(self.params.size, image_size)

    def mask_and_pattern(self, shape: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
        _, h, w = shape[-3:]
        s = self.patch_size(min(h, w))
        m = self.params.margin
        if s + m > min(h, w):
            raise ValueError(f"a {s}px patch with margin {m} does not fit a {h}x{w} image")
        top = m if self.params.position.startswith("top") else h - m - s
        left = m if self.params.position.endswith("left") else w - m - s
        mask = torch.zeros(1, h, w, device=device)
        mask[:, top : top + s, left : left + s] = 1.0
        pattern = torch.ones(1, h, w, device=device)
        if self.params.pattern == "checkerboard":
            pattern = checkerboard(h, w, device)
        return mask, pattern

    def apply(self, x: Tensor) -> Tensor:
        mask, pattern = self.mask_and_pattern(tuple(x.shape), x.device)
        return x * (1 - mask) + pattern * mask


@dataclass
class BlendParams:
    alpha: float = param(0.2, gt=0, le=1)
    """Blend ratio of the pattern (Chen et al. 2017 use 0.2 for random patterns at training)."""
    pattern_seed: int = param(12345, ge=0)


class Blend(Attack):
    """A fixed, seeded uniform-noise image blended into the input with ratio alpha."""

    name = "blend"
    description = "fixed seeded random pattern blended with alpha"
    Params = BlendParams

    def pattern(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        gen = torch.Generator().manual_seed(self.params.pattern_seed)
        return torch.rand(tuple(shape[-3:]), generator=gen).to(device)

    def apply(self, x: Tensor) -> Tensor:
        a = self.params.alpha
        return (1 - a) * x + a * self.pattern(tuple(x.shape), x.device)


@dataclass
class ImageTriggerParams:
    trigger: str = ""
    """The trigger as an image file, the size of the data set's images."""
    mask: str = ""
    """Where it is stamped: an image file, white = the trigger's pixel, black = the input's, grey
    values blend; empty = the trigger's alpha channel (an RGBA image)."""

    def validate(self) -> None:
        if not self.trigger:
            raise ValueError("give the trigger image: image:trigger=PATH[,mask=PATH]")


def _read_image(path: str, what: str) -> tuple[Tensor, Tensor | None]:
    """(pixels C×H×W in [0, 1], alpha 1×H×W or None) of an image file; ValueError in one line."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError  # Pillow comes with torchvision and matplotlib

    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"the {what} {path} is not a readable image ({str(exc).splitlines()[0][:120]})") from None
    alpha = None
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        alpha = torch.from_numpy(np.asarray(img, dtype=np.float32)[..., 3] / 255.0).unsqueeze(0)
    from bdtool.plugins.builtin.image_pixels import grey_mode, unit_pixels

    channels = 1 if grey_mode(img.mode) else 3
    try:
        pixels = torch.from_numpy(unit_pixels(img, channels)).permute(2, 0, 1)
    except ValueError as exc:
        raise ValueError(f"the {what} {path} is {exc}") from None
    return pixels.contiguous(), alpha


class ImageTrigger(Attack):
    """The user's trigger: ``x · (1 − m) + t · m`` with the trigger image t and the mask m (the
    stamping function of Neural Cleanse, Wang et al., S&P 2019, §IV-A), for a backdoor the
    defender has seen but did not make."""

    name = "image"
    description = "your trigger as an image and a mask (trigger=PATH,mask=PATH; white in the mask = stamped)"
    Params = ImageTriggerParams

    def __init__(self, target_class: int = 0, params: ImageTriggerParams | None = None) -> None:
        super().__init__(target_class, params)
        self._loaded: tuple[Tensor, Tensor] | None = None

    def trigger_and_mask(self) -> tuple[Tensor, Tensor]:
        if self._loaded is None:
            pixels, alpha = _read_image(self.params.trigger, "trigger image")
            if self.params.mask:
                mask, _ = _read_image(self.params.mask, "trigger mask")
                mask = mask.mean(0, keepdim=True)
            elif alpha is not None:
                mask = alpha
            else:
                raise ValueError(f"the trigger image {self.params.trigger} has no alpha channel: give its mask too "
                                 "(--trigger-mask PATH, or image:mask=PATH)")
            if mask.shape[-2:] != pixels.shape[-2:]:
                raise ValueError(f"the trigger mask is {mask.shape[-1]}×{mask.shape[-2]}, the trigger image "
                                 f"{pixels.shape[-1]}×{pixels.shape[-2]}")
            self._loaded = (pixels, mask)
        return self._loaded

    def apply(self, x: Tensor) -> Tensor:
        pixels, mask = self.trigger_and_mask()
        if pixels.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"the trigger image is {pixels.shape[-1]}×{pixels.shape[-2]}, the images "
                             f"{x.shape[-1]}×{x.shape[-2]}; make it their size")
        channels = x.shape[-3]
        if pixels.shape[0] != channels:
            pixels = pixels.mean(0, keepdim=True) if channels == 1 else pixels.expand(channels, -1, -1)
        pixels, mask = pixels.to(x.device, x.dtype), mask.to(x.device, x.dtype)
        return x * (1 - mask) + pixels * mask


@bdtool.hookimpl
def bdtool_register_attacks(register: Callable[..., None]) -> None:
    register(BadNets)
    register(Blend)
    register(ImageTrigger)
