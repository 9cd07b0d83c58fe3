"""Data sets: the synthetic "Shapes with Attributes", AwA2-format loaders and pair lists."""

from sane.data.awa2 import AttributeDataset
from sane.data.pairs import Pair, make_pairs, read_pairs, write_pairs
from sane.data.synthetic import (
    ATTRIBUTES,
    BACKGROUNDS,
    CLASSES,
    COLOUR_RGB,
    COLOURS,
    FACTORS,
    PATTERNS,
    SHAPES,
    SIZES,
    Rendered,
    Scene,
    counterfactual,
    random_scene,
    render,
    scene_attributes,
    write_dataset,
    write_example_pair,
)

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "CLASSES",
    "COLOURS",
    "COLOUR_RGB",
    "FACTORS",
    "PATTERNS",
    "SHAPES",
    "SIZES",
    "AttributeDataset",
    "Pair",
    "Rendered",
    "Scene",
    "counterfactual",
    "make_pairs",
    "random_scene",
    "read_pairs",
    "render",
    "scene_attributes",
    "write_dataset",
    "write_example_pair",
    "write_pairs",
]
