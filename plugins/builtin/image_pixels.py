"""Every Pillow image mode read to [0, 1] the same way, for folder data sets and trigger images
(``image_folder.py``, ``attacks.py``): a 16-bit grey PNG scaled by 65535, not clipped at 255 (a
25 %-grey trigger stayed 25 % grey, not white); a float (mode F) TIFF taken as it is when it lies
in [0, 1], not truncated to 8-bit integers (it loaded as black); palette, alpha, bilevel, CMYK and
the rest through Pillow's own conversion to grey or RGB.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def unit_pixels(img: Any, channels: int) -> np.ndarray:
    """``img`` (a PIL image) as a float32 H × W × ``channels`` array in [0, 1]; ValueError in one
    line for a float image outside [0, 1] or holding NaN (there is no one right way to scale it)."""
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # Pillow opens 16-bit PNGs as "I" (32-bit integers holding 0..65535)
        scale = 65535.0 if mode != "I" or arr.size == 0 or arr.max() <= 65535 else 4294967295.0
        grey = np.clip(arr / scale, 0.0, 1.0).astype(np.float32)
    elif mode == "F":
        grey = np.array(img, dtype=np.float32)  # a copy: Pillow's buffer is read-only
        if not np.isfinite(grey).all():
            raise ValueError("a float image holding NaN or inf")
        low, high = (float(grey.min()), float(grey.max())) if grey.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            raise ValueError(f"a float image with values in [{low:g}, {high:g}]; bdtool reads float images as "
                             "[0, 1]: rescale it, or save it as 8- or 16-bit")
    else:
        target = "L" if channels == 1 else "RGB"
        arr = np.asarray(img.convert(target), dtype=np.float32) / 255.0
        return arr[..., None] if channels == 1 else arr
    # a grey image of more than 8 bits
    return grey[..., None] if channels == 1 else np.repeat(grey[..., None], 3, axis=-1)


def grey_mode(mode: str) -> bool:
    """Whether an image of ``mode`` is grey (one channel) rather than colour."""
    return mode in ("1", "L", "LA", "I", "F", "La") or mode in SIXTEEN_BIT_MODES
