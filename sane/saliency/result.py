"""The result every saliency generator returns."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class SaliencyResult:
    """Maps over the query (and reference) plus the similarity of the unmodified pair.

    ``query_map`` is (H, W), or (K, H, W) when K references were given; ``reference_map`` is None in
    fixed mode, else shaped like the references; ``similarity`` is a float or a (K,) tensor;
    ``timings`` holds milliseconds per stage; ``n_masks_used`` how many query masks (windows) made the
    map, for the mask-based generators (an adaptive RISE stops each map when it has converged): an int,
    or with K references a list, one per map.
    """

    query_map: torch.Tensor
    reference_map: torch.Tensor | None
    similarity: float | torch.Tensor
    method: str
    mode: str
    timings: dict[str, float] = field(default_factory=dict)
    n_masks_used: int | list[int] | None = None

    def select(self, k: int) -> SaliencyResult:
        """The result for reference ``k`` of a batched result: maps (H, W), a float similarity."""
        return replace(
            self,
            query_map=self.query_map[k],
            reference_map=self.reference_map[k] if self.reference_map is not None else None,
            similarity=float(self.similarity[k]),
            n_masks_used=self.n_masks_used[k] if isinstance(self.n_masks_used, list) else self.n_masks_used,
        )
