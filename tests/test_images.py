"""Image loading: every input mode becomes RGB; bad input is a clear InputError, not a traceback."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sane.errors import InputError
from sane.images import MAX_PIXELS, Preprocess, load_image, open_image


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_grayscale_and_rgba_are_converted(tmp_path):
    gray = Image.fromarray(np.full((20, 30), 200, dtype=np.uint8), mode="L")
    assert open_image(_png(gray)).mode == "RGB"
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    rgb = open_image(_png(rgba))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (255, 255, 255)  # composited on white
    path = tmp_path / "g.png"
    gray.save(path)
    t = load_image(path, Preprocess(size=32))
    assert t.shape == (3, 32, 32) and torch.allclose(t[0], t[0, 0, 0].expand(32, 32))


def test_preprocess_round_trips():
    pre = Preprocess(size=16)
    arr = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    back = np.asarray(pre.to_image(pre.to_tensor(Image.fromarray(arr))))
    assert np.abs(back.astype(int) - arr).max() <= 1


def test_unreadable_inputs_name_the_field(tmp_path):
    with pytest.raises(InputError, match="query: cannot read image") as err:
        open_image(b"definitely not an image", field="query")
    assert err.value.field == "query"
    with pytest.raises(InputError, match="no such image file"):
        open_image(tmp_path / "missing.jpg")
    with pytest.raises(InputError, match="empty image data"):
        open_image(b"", field="reference")
    truncated = _png(Image.new("RGB", (64, 64), "red"))[:60]
    with pytest.raises(InputError, match="cannot read image"):
        open_image(truncated)


def test_decompression_bomb_is_refused():
    side = int(MAX_PIXELS**0.5) + 100
    bomb = Image.new("1", (side, side))  # 1-bit: a tiny file that decodes to a huge image
    buf = io.BytesIO()
    bomb.save(buf, format="PNG", optimize=True)
    assert len(buf.getvalue()) < 2_000_000
    with pytest.raises(InputError, match="above the limit|decompression bomb"):
        open_image(buf.getvalue(), field="query")
