"""Sliding-window occlusion for similarity (SPEC §1.1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sane.errors import InputError
from sane.saliency.engine import PerturbationGenerator
from sane.saliency.masks import BANKS, occlusion_windows


def _keep_masks(size: tuple[int, int], per_side: int, window: float, stride: float, device: str) -> torch.Tensor:
    return BANKS.get(("occlusion", tuple(size), per_side, window, stride, str(device)),
                     lambda: 1.0 - occlusion_windows(size, per_side, window, stride, device))


class SlidingWindow(PerturbationGenerator):
    """Occlude square windows of the query (25x25 positions, side 2/7, stride 1/28 of the image:
    the paper's 625 windows of 32 px at 112 px); score ``1 - s(q_w, r)``; the map averages the
    scores of the windows covering each pixel. Mode 'both' adds 6x6 windows (stride 1/7) on the
    reference and averages over them, at N + 36 forward passes.
    """

    method = "sliding_window"
    attribution = "removed"

    def __init__(
        self,
        model: nn.Module,
        batch_size: int = 256,
        windows_per_side: int = 25,
        window: float = 2 / 7,
        stride: float = 1 / 28,
        reference_windows_per_side: int = 6,
        reference_stride: float = 1 / 7,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(model, batch_size=batch_size, seed=seed, **kwargs)
        for name, value in (
            ("windows_per_side", windows_per_side),
            ("reference_windows_per_side", reference_windows_per_side),
        ):
            if int(value) < 1:
                raise InputError(f"{name} must be >= 1, got {value}", name)
        if not 0.0 < window <= 1.0:
            raise InputError(f"window must be a fraction of the image side in (0, 1], got {window}", "window")
        self.windows_per_side = int(windows_per_side)
        self.window = float(window)
        self.stride = float(stride)
        self.reference_windows_per_side = int(reference_windows_per_side)
        self.reference_stride = float(reference_stride)

    @classmethod
    def cost(cls, mode: str, options: Mapping[str, Any] | None = None, references: int = 1) -> int:
        """The query's windows (shared by all references), in mode 'both' as many again per reference
        (a bound: a reference has fewer)."""
        return int(cls.option(options or {}, "windows_per_side")) ** 2 * (1 + references if mode == "both" else 1)

    def query_masks(self, size: tuple[int, int]) -> torch.Tensor:
        return _keep_masks(tuple(size), self.windows_per_side, self.window, self.stride, str(self.device))

    def reference_masks(self, size: tuple[int, int]) -> torch.Tensor:
        return _keep_masks(
            tuple(size), self.reference_windows_per_side, self.window, self.reference_stride, str(self.device)
        )
