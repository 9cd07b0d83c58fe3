"""The validation hold-out of the training classes, shared by saliency caching and attribute training.

The test classes are kept for explanation evaluation, so attribute models are validated on a
per-class share of the training-class images; caching skips those images (their maps are never used).
"""

from __future__ import annotations

import numpy as np

DEFAULT_VAL_FRACTION = 0.15


def validation_split(targets: np.ndarray | list[int], fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0) -> np.ndarray:
    """Bool (N,) mask of validation images: ``round(fraction * n_c)`` random images of each class
    (at least one when ``fraction > 0`` and the class has two or more), deterministic in ``seed``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    targets = np.asarray(targets)
    rng = np.random.default_rng([seed, 17])
    val = np.zeros(len(targets), dtype=bool)
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        k = round(fraction * len(idx))
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        val[rng.permutation(idx)[:k]] = True
    return val
