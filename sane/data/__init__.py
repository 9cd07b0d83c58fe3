"""Data sets: the synthetic "Shapes with Attributes", AwA2 and Polyvore Outfits loaders, pair lists.

:func:`open_dataset` reads a directory in either layout; every training and evaluation step uses it.
"""

from sane.data.awa2 import AttributeDataset
from sane.data.formats import detect_format, open_dataset
from sane.data.labelled import LabelledImageDataset
from sane.data.pairs import Pair, make_pairs, read_pairs, write_pairs
from sane.data.polyvore import PolyvoreDataset, outfit_pairs
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
    counterfactual_variants,
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
    "LabelledImageDataset",
    "Pair",
    "PolyvoreDataset",
    "Rendered",
    "Scene",
    "counterfactual",
    "counterfactual_variants",
    "detect_format",
    "make_pairs",
    "open_dataset",
    "outfit_pairs",
    "random_scene",
    "read_pairs",
    "render",
    "scene_attributes",
    "write_dataset",
    "write_example_pair",
    "write_pairs",
]
