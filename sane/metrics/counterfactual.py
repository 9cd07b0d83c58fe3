"""The exact counterfactual of a synthetic pair (SPEC §6): how much each factor of the query matters.

q is re-rendered from its scene with one factor changed (:func:`sane.data.synthetic.counterfactual_variants`:
every other value of a categorical factor, ``draws`` random new positions) and
Δ_cf(factor) = mean over those renders of s(q_cf, r) − s(q, r). The factor with the most negative
Δ_cf is the pair's counterfactually best explanation: the ground truth that the attribute
explanations, their prior and the retrieval metric of §5 are checked against.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from sane.data.synthetic import FACTORS, Scene, counterfactual_variants, render
from sane.images import Preprocess
from sane.models.spec import COSINE


def counterfactual_deltas(
    embedder: Callable[[torch.Tensor], torch.Tensor],
    preprocess: Preprocess,
    scene: Scene,
    reference: torch.Tensor,
    draws: int,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Δ_cf per factor for query ``scene`` against the prepared ``reference`` image (3, H, W).

    ``embedder`` maps a (B, 3, H, W) batch to embeddings (an :class:`~sane.models.embedder.Embedder`,
    whose declared similarity scores them; a plain callable's are compared by cosine); ``draws``
    random positions are averaged for ``"position"``.
    """
    variants = {f: counterfactual_variants(scene, f, draws, rng) for f in FACTORS}
    scenes = [scene] + [v for f in FACTORS for v in variants[f]]
    batch = torch.stack([preprocess.to_tensor(render(s, preprocess.size).image) for s in scenes] + [reference])
    e = embedder(batch)
    sims = getattr(embedder, "embedding", COSINE).against(e[:-1], e[-1]).numpy()
    deltas, start = {}, 1
    for f in FACTORS:
        n = len(variants[f])
        deltas[f] = float(sims[start:start + n].mean() - sims[0])
        start += n
    return deltas


def best_factor(deltas: dict[str, float]) -> str:
    """The factor whose change lowers the similarity most (most negative Δ_cf)."""
    return min(deltas, key=deltas.get)
