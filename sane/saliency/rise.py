"""RISE for similarity (SPEC §1.2): the expected similarity when a pixel is visible."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sane.errors import InputError
from sane.saliency.engine import PerturbationGenerator
from sane.saliency.masks import rise_bank

# Reference masks use a seed stream of their own so they never coincide with the query masks.
REFERENCE_SEED_OFFSET = 1_000_003


class RISE(PerturbationGenerator):
    """RISE with N random masks over the query; in mode='both' also ``n_reference_masks`` over the
    reference, at a cost of N + n_reference_masks forward passes (not their product).

    ``query_map = sum_i s_i M_i / sum_i M_i`` with ``s_i`` the similarity of the masked query to the
    reference (both mode: averaged over the masked references). In both mode the reference map is the
    same estimate over the reference masks, scored against the unmodified query.
    """

    method = "rise"
    attribution = "kept"
    size_option = "n_masks"

    def __init__(
        self,
        model: nn.Module,
        n_masks: int = 2000,
        grid: int = 8,
        p: float = 0.5,
        batch_size: int = 256,
        seed: int = 0,
        n_reference_masks: int = 30,
        **kwargs,
    ):
        super().__init__(model, batch_size=batch_size, seed=seed, **kwargs)
        for name, value in (("n_masks", n_masks), ("n_reference_masks", n_reference_masks), ("grid", grid)):
            if int(value) < 1:
                raise InputError(f"{name} must be >= 1, got {value}", name)
        if not 0.0 < p < 1.0:
            raise InputError(f"p must be in (0, 1), got {p}", "p")
        self.n_masks = int(n_masks)
        self.grid = int(grid)
        self.p = float(p)
        self.n_reference_masks = int(n_reference_masks)

    @classmethod
    def cost(cls, mode: str, options: Mapping[str, Any] | None = None) -> int:
        options = options or {}
        extra = cls.option(options, "n_reference_masks") if mode == "both" else 0
        return int(cls.option(options, "n_masks")) + int(extra)

    def query_masks(self, size: tuple[int, int]) -> torch.Tensor:
        return rise_bank(self.n_masks, self.grid, self.p, size, self.seed, self.device)

    def reference_masks(self, size: tuple[int, int]) -> torch.Tensor:
        seed = self.seed + REFERENCE_SEED_OFFSET
        return rise_bank(self.n_reference_masks, self.grid, self.p, size, seed, self.device)
