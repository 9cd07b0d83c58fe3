"""Tests of heat map rendering: colour scale, sizes, blending and PNG output."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sane.errors import InputError
from sane.heatmap import colorize, heatmap_png, overlay, save_overlay


def _ramp(h: int = 10, w: int = 40) -> torch.Tensor:
    return torch.linspace(0, 1, w).repeat(h, 1)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def test_colorize_ramp_size_ends_and_order() -> None:
    img = colorize(_ramp())
    assert img.mode == "RGB" and img.size == (40, 10)  # PIL size is (W, H)
    arr = np.asarray(img)
    lo, hi = arr[0, 0], arr[0, -1]
    assert np.abs(lo.astype(int) - hi.astype(int)).sum() > 300  # very different ends
    assert lo.sum() < 30 and hi.sum() > 600  # dark low end, bright high end
    # Perceptual ordering: brightness rises monotonically along the ramp.
    lum = _luminance(arr[0])
    assert np.all(np.diff(lum) >= -1e-9)
    # Columns are constant (the map varies along x only).
    assert (arr == arr[:1]).all()


def test_colorize_scale_options() -> None:
    ramp = _ramp()
    # Min-max normalisation: an affine change of the map gives the same picture.
    np.testing.assert_array_equal(np.asarray(colorize(ramp)), np.asarray(colorize(ramp * 7 - 3)))
    # A fixed range: values at/below vmin get the lowest colour, at/above vmax the highest.
    arr = np.asarray(colorize(ramp, vmin=0.25, vmax=0.75))
    np.testing.assert_array_equal(arr[0, 0], arr[0, 5])
    np.testing.assert_array_equal(arr[0, -1], np.asarray(colorize(ramp))[0, -1])
    # A flat map is drawn in the lowest colour, not NaN garbage; numpy input works.
    flat = np.asarray(colorize(np.full((4, 4), 3.0)))
    np.testing.assert_array_equal(flat, np.broadcast_to(np.asarray(colorize(ramp))[0, 0], flat.shape))
    with pytest.raises(InputError, match="saliency"):
        colorize(torch.zeros(3, 4, 4))


def test_overlay_size_and_blend() -> None:
    image = Image.new("RGB", (50, 30), (0, 128, 255))
    sal = torch.rand(7, 9, generator=torch.Generator().manual_seed(0))
    out = overlay(image, sal, alpha=0.5)
    assert out.mode == "RGB" and out.size == image.size
    # alpha=0 is the image, alpha=1 the resized heat map alone.
    np.testing.assert_array_equal(np.asarray(overlay(image, sal, alpha=0.0)), np.asarray(image))
    heat = np.asarray(overlay(image, sal, alpha=1.0)).astype(int)
    mid = np.asarray(out).astype(int)
    expected = (np.asarray(image).astype(int) + heat) / 2
    assert np.abs(mid - expected).max() <= 1
    # Non-RGB images are accepted and converted.
    assert overlay(image.convert("L"), sal).mode == "RGB"
    with pytest.raises(InputError, match="alpha"):
        overlay(image, sal, alpha=1.5)


def test_overlay_resizes_the_map_onto_the_image() -> None:
    # A map hot on its left half: the hot side stays on the left at the image's resolution.
    sal = torch.zeros(4, 4)
    sal[:, :2] = 1.0
    image = Image.new("RGB", (64, 32), (0, 0, 0))
    heat = _luminance(np.asarray(overlay(image, sal, alpha=1.0)))
    assert heat[:, :24].mean() > heat[:, 40:].mean() + 100


def test_png_and_save(tmp_path) -> None:
    sal = _ramp()
    data = heatmap_png(sal)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == (40, 10)
    np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), np.asarray(colorize(sal)))
    image = Image.new("RGB", (20, 20), (200, 10, 10))
    path = tmp_path / "overlay.png"
    save_overlay(path, image, sal, alpha=0.3)
    saved = Image.open(path)
    assert saved.size == (20, 20)
    np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), np.asarray(overlay(image, sal, 0.3)))


def test_display_overlays_keep_large_images_and_enlarge_small_ones(tmp_path):
    from sane.heatmap import for_display

    small, large = Image.new("RGB", (112, 80), "white"), Image.new("RGB", (900, 600), "white")
    assert for_display(small).size == (448, 320) and for_display(large) is large
    assert for_display(small, 0) is small
    saliency = torch.zeros(112, 112)
    saliency[:, :56] = 1.0  # the left half is hot
    save_overlay(tmp_path / "o.png", small, saliency, min_side=448)
    out = np.asarray(Image.open(tmp_path / "o.png"), dtype=np.float32)
    assert out.shape == (320, 448, 3)
    left, right = out[:, :200].mean((0, 1)), out[:, -200:].mean((0, 1))
    assert not np.allclose(left, right, atol=5)  # the map's two halves show in the enlarged overlay


def test_the_card_shows_both_images_the_similarity_and_one_bar_per_attribute():
    from sane.heatmap import explanation_card

    q, r = Image.new("RGB", (112, 112), (0, 0, 255)), Image.new("RGB", (112, 112), (0, 255, 0))
    rows = [{"attribute": "red", "score": 0.8}, {"attribute": "round", "score": 0.4}]
    card = explanation_card(q, r, torch.rand(112, 112), None, 0.93, rows, side=224)
    few = explanation_card(q, r, torch.rand(112, 112), None, 0.93, rows[:1], side=224)
    assert card.width >= 2 * 224 and card.height > few.height  # a line per attribute
    arr = np.asarray(card)
    right_panel = arr[60:200, card.width - 150 : card.width - 20]
    assert (np.abs(right_panel.astype(int) - [0, 255, 0]).sum(-1) < 30).mean() > 0.9  # the reference, as it is
