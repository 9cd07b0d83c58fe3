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


GRADIENT = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (16, 1))  # 8-bit truth, left to right


def _encoded(mode: str) -> tuple[bytes, str]:
    """GRADIENT in PIL mode ``mode``, saved in a format that keeps the mode; (file bytes, mode it opens as)."""
    g = GRADIENT.astype(np.float64)
    buf = io.BytesIO()
    if mode in ("I;16", "I;16B"):  # a 16-bit greyscale PNG
        Image.frombytes("I;16B", (64, 16), (g * 257).astype(">u2").tobytes()).save(buf, format="PNG")
    elif mode == "I":  # 32-bit integer TIFF holding 16-bit values
        Image.fromarray((g * 257).astype(np.int32), "I").save(buf, format="TIFF")
    elif mode == "F":  # float TIFF in 0..1
        Image.fromarray((g / 255).astype(np.float32), "F").save(buf, format="TIFF")
    elif mode == "LA":
        Image.merge("LA", [Image.fromarray(GRADIENT), Image.new("L", (64, 16), 255)]).save(buf, format="PNG")
    elif mode == "P":  # palette with a transparent index: black (column 0) is see-through
        Image.fromarray(GRADIENT).convert("P").save(buf, format="PNG", transparency=0)
    elif mode == "CMYK":  # a CMYK JPEG: K carries the darkness
        k = Image.fromarray(255 - GRADIENT)
        zero = Image.new("L", (64, 16), 0)
        Image.merge("CMYK", [zero, zero, zero, k]).save(buf, format="JPEG", quality=100)
    elif mode == "1":
        Image.fromarray(GRADIENT > 127).save(buf, format="PNG")
    else:
        raise AssertionError(mode)
    data = buf.getvalue()
    return data, Image.open(io.BytesIO(data)).mode


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "LA", "P", "CMYK", "1"])
def test_every_mode_decodes_to_the_picture_it_holds(mode):
    """A 16-bit greyscale PNG used to come out all white (PIL clips I;16 to 255 in convert)."""
    data, opened_as = _encoded(mode)
    assert opened_as.split(";")[0] == mode.split(";")[0], opened_as
    grey = np.asarray(open_image(data)).astype(float).mean(axis=2)
    truth = (GRADIENT > 127) * 255.0 if mode == "1" else GRADIENT.astype(float)
    if mode == "P":
        truth = np.where(GRADIENT == 0, 255.0, truth)  # the transparent pixels, composited on white
    assert np.abs(grey - truth).mean() < 3, (mode, grey[0, ::8], truth[0, ::8])


def test_modes_that_cannot_be_decoded_faithfully_are_400():
    for image, match in ((Image.fromarray(np.full((8, 8), -5, np.int32), "I"), "values in"),
                         (Image.fromarray(np.full((8, 8), 1e6, np.float32), "F"), "values in"),
                         (Image.fromarray(np.full((8, 8), np.nan, np.float32), "F"), "NaN"),
                         (Image.new("La", (8, 8)), "cannot use a La image")):
        buf = io.BytesIO()
        try:
            image.save(buf, format="TIFF")
            source = buf.getvalue()
        except OSError:  # a mode no file format keeps: given as a PIL image
            source = image
        with pytest.raises(InputError, match=match) as err:
            open_image(source, field="query")
        assert err.value.field == "query" and err.value.status == 400


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_close_to_the_full_decode():
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).resize((2400, 1800), Image.BILINEAR)
    buf = io.BytesIO()
    coarse.save(buf, format="JPEG", quality=92)
    data = buf.getvalue()
    pre = Preprocess(112)
    reduced = pre.open(data)
    assert reduced.size == (300, 225)  # 1/8 of each side: both still >= 112
    full = pre.to_tensor(Image.open(io.BytesIO(data)).convert("RGB"))
    assert float((pre.to_tensor(reduced) - full).abs().mean()) < 0.05  # normalised units: the same picture


def test_the_pixel_cap_follows_the_model_and_spares_jpegs():
    pre = Preprocess(112)
    assert pre.max_pixels == 16_000_000 and Preprocess(512).max_pixels == 64_000_000  # at most the library-wide cap
    side = 4100  # 16.8 MP, above the 112-px model's cap
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (40, 90, 160)).save(buf, format=fmt)
        if fmt == "PNG":
            with pytest.raises(InputError) as info:
                pre.open(buf.getvalue(), "query")
            assert info.value.status == 413 and info.value.field == "query"
        else:
            assert max(pre.open(buf.getvalue()).size) <= side // 8 + 1
