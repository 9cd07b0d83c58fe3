"""Saliency metrics: insertion/deletion against the model (SPEC §2) and object-mask ground truth."""

from sane.metrics.correlation import pearson
from sane.metrics.ground_truth import mass_inside, pointing_game
from sane.metrics.insertion_deletion import (
    Curves,
    auc,
    gaussian_blur,
    insertion_deletion,
    insertion_deletion_curves,
    normalise_curve,
    step_masks,
)

__all__ = [
    "Curves",
    "auc",
    "gaussian_blur",
    "insertion_deletion",
    "insertion_deletion_curves",
    "mass_inside",
    "normalise_curve",
    "pearson",
    "pointing_game",
    "step_masks",
]
