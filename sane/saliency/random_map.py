"""The random baseline: a smooth random map (upsampled low-resolution noise), seeded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sane.saliency.base import SaliencyGenerator
from sane.saliency.result import SaliencyResult


class RandomSaliency(SaliencyGenerator):
    """Maps that ignore the model: bilinearly upsampled ``grid`` x ``grid`` uniform noise.

    Smooth like the other generators' maps, so metric differences reflect information, not texture.
    """

    method = "random"

    def __init__(self, model: nn.Module, grid: int = 7, seed: int = 0, batch_size: int = 256, **kwargs):
        super().__init__(model, batch_size=batch_size, seed=seed, **kwargs)
        self.grid = grid

    @classmethod
    def cost(cls, mode: str, options: Mapping[str, Any] | None = None, references: int = 1) -> int:
        return 1  # no forward pass beyond the pair's own

    def _explain(self, query: torch.Tensor, references: torch.Tensor, mode: str, condition) -> SaliencyResult:
        h, w = query.shape[-2:]
        gen = torch.Generator().manual_seed(self.seed)
        k = len(references)
        # One draw per seed, whatever the reference: K references get the maps each would get alone.
        noise = torch.rand((2, 1, self.grid, self.grid), generator=gen)
        maps = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        sims = self.embedder.embedding.against(self.embedder(references, condition),
                                               self.embedder(query[None], condition)[0])
        query_maps, reference_maps = maps[0].expand(k, h, w), maps[1].expand(k, h, w)
        return SaliencyResult(query_maps, reference_maps if mode == "both" else None, sims.cpu(), self.method, mode)
