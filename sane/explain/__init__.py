"""Explaining a pair end to end (the core's top): images in, similarity + maps + ranked attributes out.

:class:`AttributeRanker` scores the query's attributes against its saliency map with the map match
of :mod:`sane.explain.map_match`; :func:`explain_images` / :func:`explain_files` run a generator and
the ranker; :func:`write_explanation` writes what `sane explain` and `sane request` both write.
"""

from sane.explain.map_match import map_match
from sane.explain.pair import explain_files, explain_images, rank_attributes
from sane.explain.ranker import AttributeExplanation, AttributeRanker, load_prior, save_prior

__all__ = [
    "AttributeExplanation",
    "AttributeRanker",
    "explain_files",
    "explain_images",
    "load_prior",
    "map_match",
    "rank_attributes",
    "save_prior",
]
