"""Mask banks: RISE random masks and sliding windows, built vectorised on the model's device.

Masks do not depend on the image, so each bank is generated once per settings and reused across
calls (:data:`BANKS`, bounded in bytes, least recently used out, keyed by every parameter that
shapes it).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from functools import lru_cache

import torch
import torch.nn.functional as F

# Generating masks in chunks bounds the temporary upsampled grids (chunk x (s+1)c x (s+1)c floats).
_CHUNK = 512
# A bank up to this many bytes is built whole and cached (2000 masks at 112 px: 100 MB); a larger
# one (2000 masks at 224 px: 400 MB) is a :class:`RiseMaskStream`, upsampled batch by batch from its
# cached cells, so memory stays O(batch) at any input size.
MAX_BANK_BYTES = 256 * 2**20


SAMPLINGS = ("random", "sobol")


def rise_masks(
    n: int, grid: int, p: float, size: tuple[int, int], seed: int, device: str | torch.device = "cpu",
    sampling: str = "random",
) -> torch.Tensor:
    """(n, H, W) float32 RISE masks in [0, 1]: random ``grid`` x ``grid`` binary cells kept with
    probability ``p``, bilinearly upsampled to ``(grid + 1) * cell`` and randomly cropped to H x W.

    ``sampling="sobol"`` draws the cells and the crop offsets from a scrambled Sobol sequence (a point
    of ``grid² + 2`` dimensions per mask, each cell kept where its coordinate is below ``p``) instead
    of independent coin flips: every cell, pair of cells and offset is spread evenly over any
    power-of-two prefix of the bank, so a map converges in fewer masks (quasi-Monte Carlo).
    Seeded and deterministic for the same arguments: drawn on the CPU, the same masks on every device
    (up to the upsampling's float rounding); cached (do not modify in place).
    """
    return _rise_masks(*_rise_key(n, grid, p, size, seed, device, sampling))


def _rise_key(n, grid, p, size, seed, device, sampling="random") -> tuple:
    """The checked, normalised arguments of a RISE bank (its cache key)."""
    if n < 1:
        raise ValueError(f"n_masks must be >= 1, got {n}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    return int(n), int(grid), float(p), (int(size[0]), int(size[1])), int(seed), str(device), sampling


def rise_bank(
    n: int, grid: int, p: float, size: tuple[int, int], seed: int, device: str | torch.device = "cpu",
    sampling: str = "random",
) -> torch.Tensor | RiseMaskStream:
    """The same masks as :func:`rise_masks`, as one cached tensor when it takes at most
    :data:`MAX_BANK_BYTES`, else as a :class:`RiseMaskStream` that makes each slice on demand."""
    key = _rise_key(n, grid, p, size, seed, device, sampling)
    if n * size[0] * size[1] * 4 <= MAX_BANK_BYTES:
        return _rise_masks(*key)
    return RiseMaskStream(*key)


class RiseMaskStream:
    """(n, H, W) RISE masks made slice by slice (``bank[a:b]``), equal to :func:`rise_masks`' rows
    a..b; only the n low-resolution cells and shifts are kept."""

    def __init__(self, n: int, grid: int, p: float, size: tuple[int, int], seed: int, device: str,
                 sampling: str = "random"):
        self.args = (n, grid, p, size, seed, device, sampling)
        self.shape = torch.Size((n, *size))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> torch.Tensor:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("a RiseMaskStream is read in contiguous slices")
        start, stop, _ = index.indices(len(self))
        return _upsample(_rise_cells(*self.args), start, max(start, stop), self.args[3])


@lru_cache(maxsize=32)
def _rise_cells(n: int, grid: int, p: float, size: tuple[int, int], seed: int, device: str, sampling: str = "random"):
    """The random part of a bank: binary cells (n, 1, grid, grid) and crop offsets dy, dx (n,)."""
    h, w = size
    cell_h, cell_w = math.ceil(h / grid), math.ceil(w / grid)
    if sampling == "sobol":
        u = torch.quasirandom.SobolEngine(grid * grid + 2, scramble=True, seed=seed).draw(n).to(device)
        cells = (u[:, : grid * grid] < p).reshape(n, 1, grid, grid)
        dy = (u[:, -2] * cell_h).long().clamp_(max=cell_h - 1)
        dx = (u[:, -1] * cell_w).long().clamp_(max=cell_w - 1)
        return cells, dy, dx
    # Drawn on the CPU whatever the device (a CUDA generator draws other numbers from the same seed), so
    # a map is the same on every device up to float rounding; the draw is small, the upsampling is not.
    gen = torch.Generator().manual_seed(seed)
    cells = torch.rand((n, 1, grid, grid), generator=gen) < p
    dy = torch.randint(0, cell_h, (n,), generator=gen)
    dx = torch.randint(0, cell_w, (n,), generator=gen)
    return cells.to(device), dy.to(device), dx.to(device)


def _upsample(params, start: int, stop: int, size: tuple[int, int]) -> torch.Tensor:
    """Masks start..stop of a bank: cells bilinearly upsampled to (grid + 1) cells and cropped to H x W."""
    cells, dy, dx = params
    h, w = size
    grid = cells.shape[-1]
    up_h, up_w = (grid + 1) * math.ceil(h / grid), (grid + 1) * math.ceil(w / grid)
    device = cells.device
    up = F.interpolate(cells[start:stop].float(), size=(up_h, up_w), mode="bilinear", align_corners=False)
    rows = (dy[start:stop, None] + torch.arange(h, device=device))[:, :, None]  # (c, H, 1)
    cols = (dx[start:stop, None] + torch.arange(w, device=device))[:, None, :]  # (c, 1, W)
    idx = torch.arange(stop - start, device=device)[:, None, None]
    return up[:, 0][idx, rows, cols]


class BankCache:
    """Mask banks kept for reuse, bounded in bytes (not entries): least recently used first out.

    A worker serving many (n, grid, size) combinations keeps at most ``max_bytes`` of masks, on
    whichever device they live (K workers per GPU: K x max_bytes of its memory). A bank larger than the
    whole budget is made and returned but not kept. Thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._items.values())

    def get(self, key: tuple, make) -> torch.Tensor:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        size = value.numel() * value.element_size()
        with self._lock:
            if size <= self.max_bytes:
                self._items[key] = value
                self._evict()
        return value

    def resize(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"a mask cache of {max_bytes} bytes")
        with self._lock:
            self.max_bytes = int(max_bytes)
            self._evict()

    def _evict(self) -> None:
        while self._items and self.nbytes > self.max_bytes:
            self._items.popitem(last=False)


# Every cached bank of the process (RISE banks, occlusion windows): 512 MiB unless the serving
# config says otherwise (`handler.mask_cache_mb`).
BANKS = BankCache(512 * 2**20)


def _rise_masks(n: int, grid: int, p: float, size: tuple[int, int], seed: int, device: str,
                sampling: str = "random") -> torch.Tensor:
    return BANKS.get(("rise", n, grid, p, size, seed, device, sampling),
                     lambda: _make_rise_masks(n, grid, p, size, seed, device, sampling))


def _make_rise_masks(n: int, grid: int, p: float, size: tuple[int, int], seed: int, device: str,
                     sampling: str = "random") -> torch.Tensor:
    params = _rise_cells(n, grid, p, size, seed, device, sampling)
    out = torch.empty((n, *size), dtype=torch.float32, device=device)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        out[start:stop] = _upsample(params, start, stop, size)
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
