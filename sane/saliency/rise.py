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
# Masks of each half whose scores estimate the noise of independent masks (``RISE.independent_noise``).
NOISE_SAMPLE = 128


class RISE(PerturbationGenerator):
    """RISE with N random masks over the query; in mode='both' also ``n_reference_masks`` over the
    reference, at a cost of N + n_reference_masks forward passes (not their product).

    ``query_map = sum_i s_i M_i / sum_i M_i`` with ``s_i`` the similarity of the masked query to the
    reference (both mode: averaged over the masked references). In both mode the reference map is the
    same estimate over the reference masks, scored against the unmodified query.

    ``n_masks="auto"`` stops when the map is as precise as the fixed-N map it replaces, N =
    ``max_masks`` independent masks (the paper's 2000 by default), or at ``max_masks``: the masks come
    in two independent halves (two scramblings of a Sobol sequence, ``sampling="sobol"``, better spread
    than coin flips), each with its own running map; after every ``check_every`` masks (and at least
    ``min_masks``) the noise of the map so far, the spatial variance of half the difference of the
    half maps, is compared with the expected noise of N independent masks, estimated from the same
    forward passes (:meth:`independent_noise`), and the map of all masks so far is kept once its noise
    is within ``STOP_MARGIN`` of that. With a ``reliability`` (0..1) the rule is the split-half one
    instead: keep the map once its Spearman-Brown reliability ``2r / (1 + r)`` reaches it (``r``: the
    Pearson correlation of the two half maps). Each map stops on its own (with K references each map is
    the one a single-reference call gets; the stream runs until the last has stopped), and
    ``result.n_masks_used`` says how many masks made it (K references: a list, one per map).
    ``sampling`` ("random": the paper's independent coin flips, the default for a fixed N; "sobol":
    quasi-random cell patterns) applies to the query masks.
    """

    method = "rise"
    attribution = "kept"
    size_option = "n_masks"
    auto_size = True  # n_masks="auto": stop when the map has converged
    # auto stops once its noise is at most this fraction of N independent masks' (estimated): the split-half
    # noise is measured on one draw (smooth at the cells' scale, few degrees of freedom), and stopping at
    # the first check under 1 favours lucky draws (experiments/adaptive_stop.py prints the trade-off).
    STOP_MARGIN = 0.8

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
        reliability: float | None = None,
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
        if reliability is not None and not 0.0 < reliability < 1.0:
            raise InputError(f"reliability must be in (0, 1), got {reliability}", "reliability")
        sampling = sampling or ("sobol" if self.adaptive else "random")
        if sampling not in SAMPLINGS:
            raise InputError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}", "sampling")
        self.n_masks = int(max_masks) if self.adaptive else int(n_masks)  # auto: the ceiling
        self.grid = int(grid)
        self.p = float(p)
        self.n_reference_masks = int(n_reference_masks)
        self.sampling = sampling
        self.min_masks, self.check_every = int(min_masks), int(check_every)
        self.reliability = None if reliability is None else float(reliability)

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.adaptive:
            return super()._query_maps(queries, owner, targets, size, condition)
        half = -(-self.n_masks // 2)
        step = max(1, self.check_every // 2)  # masks per half between two checks
        seeds = (self.seed, self.seed + HALF_SEED_OFFSET)
        banks = [rise_bank(half, self.grid, self.p, size, s, self.device, self.sampling) for s in seeds]
        hw = size[0] * size[1]
        sums = [(torch.zeros((len(targets), hw), device=self.device), torch.zeros(hw, device=self.device))
                for _ in banks]
        kept: list[list[torch.Tensor]] = [[], []]  # each half's scores (c, B) of its first masks
        sample = None  # (masks (k, H*W), scores (k, B)): the first NOISE_SAMPLE masks of each half, once made
        # Each map stops on its own (K references: each map equals its single-reference map); the stream
        # goes on while any map has not converged.
        maps = torch.zeros((len(targets), hw), device=self.device)
        n_used = torch.zeros(len(targets), dtype=torch.long)
        done = torch.zeros(len(targets), dtype=torch.bool)
        used = 0
        for start in range(0, half, step):
            growing = start < NOISE_SAMPLE
            for bank, acc, scores in zip(banks, sums, kept):
                self._stream(queries, bank[start : start + step], owner, targets, condition, sums=acc,
                             scores_out=scores if growing and self.reliability is None else None)
            used += 2 * len(range(start, min(start + step, half)))
            last = start + step >= half
            if used < self.min_masks and not last:
                continue
            (num_a, cov_a), (num_b, cov_b) = sums
            pooled = (num_a + num_b) / (cov_a + cov_b).clamp_min(1e-6)  # the map of all masks so far
            if last:
                now = ~done
            else:
                if self.reliability is None and (growing or sample is None):  # made once it is complete
                    k = min(NOISE_SAMPLE, used // 2)
                    sample = (torch.cat([bank[:k] for bank in banks]).flatten(1),
                              torch.cat([torch.cat(half_scores)[:k] for half_scores in kept]))
                now = self._converged(sums, pooled, sample) & ~done
            if now.any():
                rows = now.to(self.device)
                maps[rows] = pooled[rows]
                n_used[now] = used
                done |= now
            if done.all():
                break
        return maps, n_used

    def _converged(
        self, sums: list[tuple[torch.Tensor, torch.Tensor]], pooled: torch.Tensor,
        sample: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """(B,) bool, on the CPU: whether each map (``pooled``, of all masks so far) is as precise as
        ``n_masks`` independent masks (within ``STOP_MARGIN``), or with a ``reliability``, whether its
        split-half reliability (Spearman-Brown) reaches it."""
        a, b = (num.double() / cov.double().clamp_min(1e-6) for num, cov in sums)
        if self.reliability is not None:
            a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
            r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
            return (2 * r / (1 + r) >= self.reliability).cpu()
        noise = ((a - b) / 2).var(1)  # (B,): each map's own noise, from its two independent halves
        return (noise <= self.STOP_MARGIN * self.independent_noise(pooled, *sample)).cpu()

    def independent_noise(
        self, maps: torch.Tensor, masks: torch.Tensor, scores: torch.Tensor
    ) -> torch.Tensor:
        """(B,) the expected spatial variance of the error of B maps made from ``n_masks`` independent
        masks, estimated from a sample of masks (k, H*W) and their scores (k, B) with the maps (B, H*W)
        as the truth: with independent masks the error of ``sum_i s_i M_i / sum_i M_i`` at x is about
        ``sum_i u_i(x) / (N p)``, ``u_i(x) = (s_i - map(x)) M_i(x)``, so its spatial variance is about
        ``E_i[Var_x u_i] / (N p^2)``. Any mask design with the same marginal (one mask of a Sobol bank
        is one RISE mask) estimates ``E_i`` alike. Moments are taken without forming the (B, k, H*W) u."""
        masks, maps = masks.float(), maps.float()
        scores = scores.double()
        hw = masks.shape[1]
        squared = masks * masks
        # (k, B): the mean over x of u_i(x)^2, and of u_i(x)
        mean_u2 = (scores**2 * squared.mean(1, keepdim=True).double() - 2 * scores * (squared @ maps.T).double() / hw
                   + (squared @ (maps * maps).T).double() / hw)
        mean_u = scores * masks.mean(1, keepdim=True).double() - (masks @ maps.T).double() / hw
        return (mean_u2 - mean_u**2).mean(0) / (self.n_masks * self.p**2)

    def reference_masks(self, size: tuple[int, int]) -> torch.Tensor:
        seed = self.seed + REFERENCE_SEED_OFFSET
        return rise_bank(self.n_reference_masks, self.grid, self.p, size, seed, self.device)
