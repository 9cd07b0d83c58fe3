"""The random baseline: a smooth random map (upsampled low-resolution noise), seeded."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sane.errors import InputError
from sane.models.embedder import Embedder
from sane.saliency.engine import MODES, check_pair
from sane.saliency.result import SaliencyResult


class RandomSaliency:
    """Maps that ignore the model: bilinearly upsampled ``grid`` x ``grid`` uniform noise.

    Smooth like the other generators' maps, so metric differences reflect information, not texture.
    """

    method = "random"

    def __init__(self, model: nn.Module, grid: int = 7, seed: int = 0, batch_size: int = 256, **kwargs):
        self.embedder = Embedder(model, batch_size, **kwargs)
        self.grid = grid
        self.seed = seed

    def explain(self, query: torch.Tensor, reference: torch.Tensor, mode: str = "fixed", condition=None):
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}", "mode")
        q, refs, batched = check_pair(query, reference)
        h, w = q.shape[-2:]
        gen = torch.Generator().manual_seed(self.seed)
        k = len(refs)
        noise = torch.rand((2 * k, 1, self.grid, self.grid), generator=gen)
        maps = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        sims = self.embedder.embedding.against(self.embedder(refs, condition), self.embedder(q[None], condition)[0])
        qmap, rmap = maps[:k], (maps[k:] if mode == "both" else None)
        if not batched:
            qmap, rmap = qmap[0], (rmap[0] if rmap is not None else None)
        return SaliencyResult(qmap, rmap, sims.cpu() if batched else float(sims[0]), self.method, mode)
