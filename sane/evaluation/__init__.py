"""Evaluations that combine models, data and metrics: similarity, saliency, attributes, explanations."""

from sane.evaluation.attribute_explanations import evaluate_explanations, format_explanation_table
from sane.evaluation.attribute_predictions import (
    evaluate_attributes,
    format_attribute_report,
    saliency_agreement,
)
from sane.evaluation.prior import estimate_prior, estimate_prior_counterfactual, same_class_pairs
from sane.evaluation.retrieval import counterfactual_table, embed_images, evaluate_similarity, recall_at_k
from sane.evaluation.saliency_maps import evaluate_saliency, format_saliency_table

__all__ = [
    "counterfactual_table",
    "embed_images",
    "estimate_prior",
    "estimate_prior_counterfactual",
    "evaluate_attributes",
    "evaluate_explanations",
    "evaluate_saliency",
    "evaluate_similarity",
    "format_attribute_report",
    "format_explanation_table",
    "format_saliency_table",
    "recall_at_k",
    "saliency_agreement",
    "same_class_pairs",
]
