"""Saliency maps rendered for people: colour heat maps, overlays on the image, PNG bytes.

The colormap is an inferno-like ramp (dark purple -> red -> yellow) interpolated in numpy from a few
anchor colours: perceptually ordered, readable in greyscale print, and no matplotlib dependency.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sane.errors import InputError
from sane.images import to_rgb

__all__ = ["colorize", "heatmap_png", "overlay", "save_overlay"]

# Matplotlib's "inferno" sampled at 0, 1/8, ..., 1 (sRGB 0..255).
_ANCHORS = np.array(
    [
        (0, 0, 4),
        (31, 12, 72),
        (85, 15, 109),
        (136, 34, 106),
        (186, 54, 85),
        (227, 89, 51),
        (249, 142, 9),
        (249, 203, 53),
        (252, 255, 164),
    ],
    dtype=np.float64,
)


def _build_lut(anchors: np.ndarray, n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colour table, linearly interpolated between evenly spaced anchors."""
    xs = np.linspace(0.0, 1.0, len(anchors))
    q = np.linspace(0.0, 1.0, n)
    lut = np.stack([np.interp(q, xs, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)


_LUT = _build_lut(_ANCHORS)


def _as_map(saliency: torch.Tensor | np.ndarray) -> np.ndarray:
    """Validate a 2-D map and return it as a float64 numpy array (NaN -> the map's minimum)."""
    if isinstance(saliency, torch.Tensor):
        arr = saliency.detach().float().cpu().numpy()
    else:
        arr = np.asarray(saliency)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"saliency: expected a non-empty (H, W) map, got shape {arr.shape}", "saliency")
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        fill = arr[finite].min() if finite.any() else 0.0
        arr = np.where(finite, arr, fill)
    return arr


def _scale(arr: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    """Map values to [0, 1]: min-max by default, or the given range (values outside are clipped)."""
    lo = float(arr.min()) if vmin is None else float(vmin)
    hi = float(arr.max()) if vmax is None else float(vmax)
    if hi <= lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def colorize(
    saliency: torch.Tensor | np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> Image.Image:
    """(H, W) saliency -> an H x W RGB heat map (low = dark purple, high = pale yellow)."""
    arr = _as_map(saliency)
    idx = np.round(_scale(arr, vmin, vmax) * (len(_LUT) - 1)).astype(np.intp)
    return Image.fromarray(_LUT[idx])


def overlay(
    image: Image.Image,
    saliency: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """The heat map, resized bilinearly to ``image``'s size, alpha-blended over it (RGB).

    The scalar map is resized before colouring (interpolating colours would invent hues), using the
    original map's range so resizing does not change the colour scale. ``alpha`` is the heat map's weight.
    """
    if not isinstance(image, Image.Image):
        raise InputError(f"image: expected a PIL image, got {type(image).__name__}", "image")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha: must be in [0, 1], got {alpha}", "alpha")
    arr = _as_map(saliency)
    lo = float(arr.min()) if vmin is None else vmin
    hi = float(arr.max()) if vmax is None else vmax
    w, h = image.size
    if arr.shape != (h, w):
        t = torch.from_numpy(arr).view(1, 1, *arr.shape)
        arr = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
        arr = arr[0, 0].numpy()
    heat = colorize(arr, lo, hi)
    return Image.blend(to_rgb(image), heat, alpha)


def heatmap_png(
    saliency: torch.Tensor | np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> bytes:
    """The colorized map as PNG bytes, e.g. for a JSON response (base64) or a file."""
    buf = io.BytesIO()
    colorize(saliency, vmin, vmax).save(buf, format="PNG")
    return buf.getvalue()


DISPLAY_SIDE = 448  # long side, in pixels, of an overlay meant to be looked at


def for_display(image: Image.Image, min_side: int = DISPLAY_SIDE) -> Image.Image:
    """``image`` at its own resolution, enlarged (bicubic) until its long side is at least ``min_side``
    (0: as it is); never shrunk."""
    long_side = max(image.size)
    if min_side <= 0 or long_side >= min_side:
        return image
    scale = min_side / long_side
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)


def save_overlay(
    path: str | os.PathLike,
    image: Image.Image,
    saliency: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    min_side: int = 0,
) -> None:
    """Write :func:`overlay` to ``path`` (the format follows the extension), over ``image`` at its own
    resolution or enlarged to a long side of ``min_side`` (:func:`for_display`)."""
    overlay(for_display(image, min_side), saliency, alpha).save(os.fspath(path))


def explanation_card(
    query: Image.Image,
    reference: Image.Image,
    query_map: torch.Tensor | np.ndarray,
    reference_map: torch.Tensor | np.ndarray | None,
    similarity: float,
    explanations: list[dict] | None = None,
    title: str = "",
    side: int = DISPLAY_SIDE,
) -> Image.Image:
    """One picture of an explanation: query and reference side by side (each with its heat map, the
    reference plain in fixed mode) at ``side`` pixels high, the similarity, and the top attributes
    with their scores as bars."""
    def panel(image: Image.Image, saliency) -> Image.Image:
        shown = overlay(image, saliency) if saliency is not None else to_rgb(image)
        return shown.resize((max(1, round(shown.width * side / shown.height)), side), Image.BICUBIC)

    left, right = panel(query, query_map), panel(reference, reference_map)
    font, small = ImageFont.load_default(size=max(12, side // 18)), ImageFont.load_default(size=max(10, side // 24))
    pad, line = side // 28, side // 14
    rows = list(explanations or [])
    width = left.width + right.width + 3 * pad
    height = pad + line + side + pad + line + len(rows) * line + pad
    card = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(card)
    draw.text((pad, pad), title or "query", fill="black", font=small)
    draw.text((2 * pad + left.width, pad), "reference", fill="black", font=small)
    card.paste(left, (pad, pad + line))
    card.paste(right, (2 * pad + left.width, pad + line))
    y = pad + line + side + pad
    draw.text((pad, y), f"similarity {similarity:.3f}", fill="black", font=font)
    top = max((float(e["score"]) for e in rows), default=1.0) or 1.0
    bar_x, bar_w = pad + width // 3, width - width // 3 - 2 * pad
    for k, e in enumerate(rows):
        y = pad + line + side + pad + (k + 1) * line
        draw.text((pad, y), f"{k + 1}. {e['attribute']}  {float(e['score']):.3f}", fill="black", font=small)
        length = max(1, round(bar_w * max(0.0, float(e["score"])) / top))
        draw.rectangle((bar_x, y + line // 5, bar_x + length, y + line - line // 4), fill=(214, 96, 48))
    return card
