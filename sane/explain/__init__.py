"""Explaining a pair end to end: images in, similarity + maps + ranked attributes out."""

from sane.explain.pair import explain_files, explain_images, rank_attributes
from sane.explain.ranker import (
    AttributeExplanation,
    AttributeRanker,
    estimate_prior_counterfactual,
    load_prior,
    save_prior,
)

__all__ = [
    "AttributeExplanation",
    "AttributeRanker",
    "estimate_prior_counterfactual",
    "explain_files",
    "explain_images",
    "load_prior",
    "rank_attributes",
    "save_prior",
]
