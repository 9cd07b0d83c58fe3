"""RISE for similarity (SPEC §1.2): the expected similarity when a pixel is visible."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sane.errors import InputError
from sane.saliency.engine import PerturbationGenerator
from sane.saliency.masks import SAMPLINGS, rise_bank

# Reference masks use a seed stream of their own so they never coincide with the query masks.
REFERENCE_SEED_OFFSET = 1_000_003
# An adaptive map's second half of masks: an independent scrambling of the Sobol sequence.
HALF_SEED_OFFSET = 2_000_003
AUTO = "auto"


class RISE(PerturbationGenerator):
    """RISE with N random masks over the query; in mode='both' also ``n_reference_masks`` over the
    reference, at a cost of N + n_reference_masks forward passes (not their product).

    ``query_map = sum_i s_i M_i / sum_i M_i`` with ``s_i`` the similarity of the masked query to the
    reference (both mode: averaged over the masked references). In both mode the reference map is the
    same estimate over the reference masks, scored against the unmodified query.

    ``n_masks="auto"`` stops when the map has converged: the masks come in two independent halves
    (two scramblings of a Sobol sequence, ``sampling="sobol"``), each with its own running map; after
    every ``check_every`` masks (and at least ``min_masks``) the Spearman-Brown reliability of the
    split, ``2r / (1 + r)`` with ``r`` the Pearson correlation of the two half maps, is compared with
    ``reliability``; the map of all masks so far is returned once every map of the call reaches it,
    or at ``max_masks``. ``result.n_masks_used`` says how many it took. ``sampling`` ("random": the
    paper's independent coin flips, the default for a fixed N; "sobol": quasi-random cell patterns,
    better spread) applies to the query masks.
    """

    method = "rise"
    attribution = "kept"
    size_option = "n_masks"
    auto_size = True  # n_masks="auto": stop when the map has converged

    def __init__(
        self,
        model: nn.Module,
        n_masks: int = 2000,
        grid: int = 8,
        p: float = 0.5,
        batch_size: int = 256,
        seed: int = 0,
        n_reference_masks: int = 30,
        sampling: str | None = None,
        max_masks: int = 2000,
        min_masks: int = 128,
        check_every: int = 128,
        reliability: float = 0.97,
        **kwargs,
    ):
        super().__init__(model, batch_size=batch_size, seed=seed, **kwargs)
        self.adaptive = n_masks == AUTO
        if isinstance(n_masks, str) and not self.adaptive:
            raise InputError(f"n_masks must be a number of masks or {AUTO!r}, got {n_masks!r}", "n_masks")
        sizes = {"n_reference_masks": n_reference_masks, "grid": grid, "max_masks": max_masks,
                 "min_masks": min_masks, "check_every": check_every}
        for name, value in (({} if self.adaptive else {"n_masks": n_masks}) | sizes).items():
            if int(value) < 1:
                raise InputError(f"{name} must be >= 1, got {value}", name)
        if not 0.0 < p < 1.0:
            raise InputError(f"p must be in (0, 1), got {p}", "p")
        if not 0.0 < reliability < 1.0:
            raise InputError(f"reliability must be in (0, 1), got {reliability}", "reliability")
        sampling = sampling or ("sobol" if self.adaptive else "random")
        if sampling not in SAMPLINGS:
            raise InputError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}", "sampling")
        self.n_masks = int(max_masks) if self.adaptive else int(n_masks)  # auto: the ceiling
        self.grid = int(grid)
        self.p = float(p)
        self.n_reference_masks = int(n_reference_masks)
        self.sampling = sampling
        self.min_masks, self.check_every, self.reliability = int(min_masks), int(check_every), float(reliability)

    @classmethod
    def cost(cls, mode: str, options: Mapping[str, Any] | None = None, references: int = 1) -> int:
        """N (for ``"auto"`` its ceiling ``max_masks``; shared by all references) plus, in mode 'both',
        the reference masks of each reference."""
        options = options or {}
        extra = references * cls.option(options, "n_reference_masks") if mode == "both" else 0
        n = cls.option(options, "n_masks")
        return int(cls.option(options, "max_masks") if n == AUTO else n) + int(extra)

    def query_masks(self, size: tuple[int, int]) -> torch.Tensor:
        return rise_bank(self.n_masks, self.grid, self.p, size, self.seed, self.device, self.sampling)

    def _query_maps(
        self, queries: torch.Tensor, owner: torch.Tensor, targets: torch.Tensor, size: tuple[int, int], condition
    ) -> tuple[torch.Tensor, int]:
        if not self.adaptive:
            return super()._query_maps(queries, owner, targets, size, condition)
        half = -(-self.n_masks // 2)
        step = max(1, self.check_every // 2)  # masks per half between two checks
        seeds = (self.seed, self.seed + HALF_SEED_OFFSET)
        banks = [rise_bank(half, self.grid, self.p, size, s, self.device, self.sampling) for s in seeds]
        hw = size[0] * size[1]
        sums = [(torch.zeros((len(targets), hw), device=self.device), torch.zeros(hw, device=self.device))
                for _ in banks]
        used = 0
        for start in range(0, half, step):
            for bank, acc in zip(banks, sums):
                self._stream(queries, bank[start : start + step], owner, targets, condition, sums=acc)
            used += 2 * len(range(start, min(start + step, half)))
            if used >= self.min_masks and self._converged(sums):
                break
        (num_a, cov_a), (num_b, cov_b) = sums
        return (num_a + num_b) / (cov_a + cov_b).clamp_min(1e-6), used

    def _converged(self, sums: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """Whether every map's split-half reliability (Spearman-Brown) has reached ``reliability``."""
        a, b = (num / cov.clamp_min(1e-6) for num, cov in sums)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
        return bool((2 * r / (1 + r) >= self.reliability).all())

    def reference_masks(self, size: tuple[int, int]) -> torch.Tensor:
        seed = self.seed + REFERENCE_SEED_OFFSET
        return rise_bank(self.n_reference_masks, self.grid, self.p, size, seed, self.device)
