"""Saliency metrics against object masks (SPEC §2, §6): pointing game and mass inside the object.

Only possible where the true evidence is known, e.g. the synthetic "Shapes with Attributes" data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sane.errors import InputError

__all__ = ["mass_inside", "pointing_game"]


def _pair(
    saliency: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and convert to (float64 map, bool mask) on the CPU, both (H, W)."""
    s = saliency if isinstance(saliency, torch.Tensor) else torch.as_tensor(np.asarray(saliency))
    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if s.dim() != 2:
        raise InputError(f"saliency: expected an (H, W) map, got shape {tuple(s.shape)}", "saliency")
    if m.shape != s.shape:
        raise InputError(
            f"mask: shape {tuple(m.shape)} does not match the saliency map's {tuple(s.shape)}", "mask"
        )
    s = s.detach().cpu().double()
    if not torch.isfinite(s).all():
        raise InputError("saliency: map contains NaN or infinite values", "saliency")
    return s, m.detach().cpu() != 0


def pointing_game(
    saliency: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray, tolerance: int = 0
) -> bool:
    """True if the map's peak lies in the object mask, or within ``tolerance`` pixels of it.

    The peak is the first maximum in raster order. Tolerance is Euclidean distance in pixels (the
    mask dilated by a disc), the usual slack for a peak on an object's edge.
    """
    s, m = _pair(saliency, mask)
    if tolerance < 0:
        raise InputError(f"tolerance: must be >= 0, got {tolerance}", "tolerance")
    h, w = s.shape
    y, x = divmod(int(torch.argmax(s)), w)
    r = math.floor(tolerance)
    y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
    # Only the window around the peak matters: no need to dilate the whole mask.
    dy = torch.arange(y0, y1).view(-1, 1) - y
    dx = torch.arange(x0, x1).view(1, -1) - x
    disc = dy * dy + dx * dx <= tolerance * tolerance
    return bool((m[y0:y1, x0:x1] & disc).any())


def mass_inside(saliency: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> float:
    """Share (0..1) of the map's mass, ``S - S.min()``, that falls inside the object mask.

    Shifting by the minimum makes maps with an offset (e.g. RISE, in similarity units) comparable;
    a constant map carries no information and scores the mask's area fraction, i.e. chance.
    """
    s, m = _pair(saliency, mask)
    s = s - s.min()
    total = s.sum()
    if total <= 0:
        return float(m.double().mean())
    return float(s[m].sum() / total)
