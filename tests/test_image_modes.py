"""Every Pillow image mode reads to [0, 1] the same way, for folder data sets and for trigger images
(plugins/builtin/image_pixels.py): a 16-bit 25 %-grey image stays 25 % grey, a float TIFF in [0, 1]
is taken as it is, a float outside [0, 1] is refused in one line (docs/reliability.md)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from bdtool.plugins.builtin.attacks import _read_image
from bdtool.plugins.builtin.image_pixels import unit_pixels

QUARTER = 0.25


def _image(kind: str) -> tuple[Image.Image, str]:
    """A 4 × 4 image whose every pixel is 25 % grey, in ``kind``, and the file suffix it saves as."""
    if kind == "L":
        return Image.fromarray(np.full((4, 4), 64, np.uint8)), ".png"
    if kind == "I;16":
        return Image.fromarray(np.full((4, 4), 16384, np.uint16)), ".png"
    if kind == "F":
        return Image.fromarray(np.full((4, 4), QUARTER, np.float32)), ".tiff"
    if kind == "RGB":
        return Image.fromarray(np.full((4, 4, 3), 64, np.uint8)), ".png"
    if kind == "P":
        return Image.fromarray(np.full((4, 4, 3), 64, np.uint8)).quantize(4), ".png"  # its own palette
    if kind == "LA":
        return Image.fromarray(np.full((4, 4, 2), [64, 255], np.uint8), "LA"), ".png"
    if kind == "RGBA":
        return Image.fromarray(np.full((4, 4, 4), [64, 64, 64, 255], np.uint8)), ".png"
    raise AssertionError(kind)


MODES = ["L", "I;16", "F", "RGB", "P", "LA", "RGBA"]


@pytest.mark.parametrize("kind", MODES)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_saved_and_read_back_is_a_quarter_grey(tmp_path, kind, channels):
    img, suffix = _image(kind)
    path = tmp_path / f"quarter{suffix}"
    img.save(path)
    with Image.open(path) as reread:  # as a folder data set reads it (16-bit PNGs come back as mode I)
        pixels = unit_pixels(reread, channels)
    assert pixels.shape == (4, 4, channels) and pixels.dtype == np.float32
    assert np.allclose(pixels, QUARTER, atol=1 / 255)


@pytest.mark.parametrize("kind", MODES)
def test_a_trigger_image_of_every_mode_is_a_quarter_grey(tmp_path, kind):
    img, suffix = _image(kind)
    path = tmp_path / f"trigger{suffix}"
    img.save(path)
    pixels, _ = _read_image(str(path), "trigger image")
    assert np.allclose(pixels.numpy(), QUARTER, atol=1 / 255)


@pytest.mark.parametrize("values, says", [(np.full((4, 4), 200.0, np.float32), "values in [200, 200]"),
                                          (np.full((4, 4), np.nan, np.float32), "NaN")])
def test_a_float_image_that_cannot_be_read_as_unit_range_is_refused(tmp_path, values, says):
    path = tmp_path / "odd.tiff"
    Image.fromarray(values).save(path)
    with pytest.raises(ValueError, match=re.escape(says)):
        _read_image(str(path), "trigger image")
