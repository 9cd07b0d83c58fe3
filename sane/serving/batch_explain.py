"""Explaining a TorchServe batch of pairs as ONE stream of masked images through the backbone.

The stream itself is the engine's (:meth:`PerturbationExplainer.explain_pairs`); generators that
compute their maps otherwise (LIME, the learned mask) are explained one request at a time.
"""

from __future__ import annotations

import torch

from sane.saliency.engine import PerturbationExplainer
from sane.saliency.result import SaliencyResult


def streams_batches(explainer) -> bool:
    """Whether ``explainer`` computes its maps with the unmodified shared engine (then it can be batched)."""
    cls = type(explainer)
    return (
        isinstance(explainer, PerturbationExplainer)
        and cls.explain is PerturbationExplainer.explain
        and cls._stream is PerturbationExplainer._stream
    )


def explain_pairs(
    explainer, queries: list[torch.Tensor], references: list[torch.Tensor], mode: str = "fixed"
) -> list[SaliencyResult]:
    """Explain B (query, reference) pairs with one explainer; one shared stream when the engine allows.

    Returns one :class:`SaliencyResult` per pair, as ``explainer.explain(query, reference, mode)`` would.
    """
    sizes = {tuple(t.shape) for t in (*queries, *references)}
    if not streams_batches(explainer) or len(sizes) != 1 or len(queries) == 1:
        return [explainer.explain(q, r, mode=mode) for q, r in zip(queries, references)]
    return explainer.explain_pairs(queries, references, mode)
