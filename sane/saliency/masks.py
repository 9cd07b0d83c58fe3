"""Mask banks: RISE random masks and sliding windows, built vectorised on the model's device.

Masks do not depend on the image, so each bank is generated once per settings and reused across
calls (an LRU cache keyed by every parameter that shapes it).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

# Generating masks in chunks bounds the temporary upsampled grids (chunk x (s+1)c x (s+1)c floats).
_CHUNK = 512


def rise_masks(
    n: int, grid: int, p: float, size: tuple[int, int], seed: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(n, H, W) float32 RISE masks in [0, 1]: random ``grid`` x ``grid`` binary cells kept with
    probability ``p``, bilinearly upsampled to ``(grid + 1) * cell`` and randomly cropped to H x W.

    Seeded and deterministic for the same arguments and device; cached (do not modify in place).
    """
    if n < 1:
        raise ValueError(f"n_masks must be >= 1, got {n}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    return _rise_masks(int(n), int(grid), float(p), (int(size[0]), int(size[1])), int(seed), str(device))


@lru_cache(maxsize=8)
def _rise_masks(n: int, grid: int, p: float, size: tuple[int, int], seed: int, device: str) -> torch.Tensor:
    h, w = size
    cell_h, cell_w = math.ceil(h / grid), math.ceil(w / grid)
    up_h, up_w = (grid + 1) * cell_h, (grid + 1) * cell_w
    gen = torch.Generator(device=device).manual_seed(seed)
    cells = torch.rand((n, 1, grid, grid), generator=gen, device=device) < p
    dy = torch.randint(0, cell_h, (n,), generator=gen, device=device)
    dx = torch.randint(0, cell_w, (n,), generator=gen, device=device)
    out = torch.empty((n, h, w), dtype=torch.float32, device=device)
    rows_base = torch.arange(h, device=device)
    cols_base = torch.arange(w, device=device)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        up = F.interpolate(cells[start:stop].float(), size=(up_h, up_w), mode="bilinear", align_corners=False)
        rows = (dy[start:stop, None] + rows_base)[:, :, None]  # (c, H, 1)
        cols = (dx[start:stop, None] + cols_base)[:, None, :]  # (c, 1, W)
        idx = torch.arange(stop - start, device=device)[:, None, None]
        out[start:stop] = up[:, 0][idx, rows, cols]
    return out


def window_positions(side: int, window: int, count: int, stride: float) -> torch.Tensor:
    """Top-left offsets of ``count`` windows along one axis, centred on the image (may be negative:
    windows hang over the border equally on both sides)."""
    span = (count - 1) * stride + window
    offset = (side - span) / 2
    return torch.tensor([round(offset + i * stride) for i in range(count)])


def occlusion_windows(
    size: tuple[int, int], per_side: int, window_frac: float, stride_frac: float, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(per_side**2, H, W) float32 indicator masks, 1 inside each square window.

    Window side ``window_frac`` of the image side, stride ``stride_frac`` of it; at 112 px with
    (25, 2/7, 1/28) that is the paper's 625 windows of 32 px, stride 4, hanging 8 px over the border.
    """
    h, w = size
    side = min(h, w)
    window = max(1, round(side * window_frac))
    ys = window_positions(h, window, per_side, h * stride_frac)
    xs = window_positions(w, window, per_side, w * stride_frac)
    r = torch.arange(h)
    c = torch.arange(w)
    rows = ((r[None] >= ys[:, None]) & (r[None] < ys[:, None] + window)).float()  # (n, H)
    cols = ((c[None] >= xs[:, None]) & (c[None] < xs[:, None] + window)).float()  # (n, W)
    windows = rows[:, None, :, None] * cols[None, :, None, :]  # (n, n, H, W)
    return windows.reshape(per_side * per_side, h, w).to(device)
