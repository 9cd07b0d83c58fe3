"""Evaluations that combine models, data and metrics: similarity quality and saliency quality."""

from sane.evaluation.saliency import evaluate_saliency, format_saliency_table
from sane.evaluation.similarity import counterfactual_table, embed_images, evaluate_similarity, recall_at_k

__all__ = [
    "counterfactual_table",
    "embed_images",
    "evaluate_saliency",
    "evaluate_similarity",
    "format_saliency_table",
    "recall_at_k",
]
