"""Similarity networks and their checkpoints."""

from sane.models.backbones import (
    ARCHITECTURES,
    EmbeddingNet,
    build_embedding,
    compact_embedding,
    resnet18_embedding,
    resnet50_embedding,
)
from sane.models.checkpoint import default_weights_path, load_similarity, load_torchscript, save_similarity
from sane.models.embedder import Embedder, model_device

__all__ = [
    "ARCHITECTURES",
    "Embedder",
    "EmbeddingNet",
    "build_embedding",
    "compact_embedding",
    "default_weights_path",
    "load_similarity",
    "load_torchscript",
    "model_device",
    "resnet18_embedding",
    "resnet50_embedding",
    "save_similarity",
]

# Attribute predictors (SPEC §3): SANE, its baselines and their checkpoints.
from sane.models.attribute_predictors import (  # noqa: E402
    ATTRIBUTE_MODELS,
    ATTRIBUTE_TRUNKS,
    AttributePredictor,
    FashionSearchNet,
    RandomAttributes,
    build_attribute_model,
    default_attribute_weights,
    load_attributes,
    predict_attributes,
    save_attributes,
)

__all__ += [
    "ATTRIBUTE_MODELS",
    "ATTRIBUTE_TRUNKS",
    "AttributePredictor",
    "FashionSearchNet",
    "RandomAttributes",
    "build_attribute_model",
    "default_attribute_weights",
    "load_attributes",
    "predict_attributes",
    "save_attributes",
]
